"""Generate docs/cli.md from the CLI's own --help output.

Run: python docs/gen_cli.py   (tests/test_docs.py fails when the page is stale)
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ecomarine.cli import cli


def render() -> str:
    """The page text."""
    lines = [
        "# CLI reference",
        "",
        "Generated from the commands' own `--help` by `python docs/gen_cli.py`.",
        "Every user error prints one `error: ...` line and exits with code 2; add `--debug`",
        "for the traceback.",
        "",
    ]

    def walk(cmd: click.Command, path: list[str], parent: click.Context | None) -> None:
        # Same help names as the real CLI (its context_settings), inherited by subcommands;
        # click caches the help option per command, so this must match what main() uses.
        ctx = click.Context(
            cmd,
            parent=parent,
            info_name=path[-1],
            terminal_width=100,
            max_content_width=100,
            help_option_names=["-h", "--help"],
        )
        lines.extend([f"## `{' '.join(path)}`", "", "```text", cmd.get_help(ctx), "```", ""])
        if isinstance(cmd, click.Group):
            for name in sorted(cmd.commands):
                walk(cmd.commands[name], [*path, name], ctx)

    walk(cli, ["ecomarine"], None)
    return "\n".join(lines)


if __name__ == "__main__":
    out = Path(__file__).with_name("cli.md")
    out.write_text(render())
    sys.stdout.write(f"wrote {out}\n")
