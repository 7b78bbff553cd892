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

    def walk(cmd: click.Command, path: list[str]) -> None:
        ctx = click.Context(
            cmd, info_name=" ".join(path), terminal_width=100, max_content_width=100
        )
        lines.extend([f"## `{' '.join(path)}`", "", "```text", cmd.get_help(ctx), "```", ""])
        if isinstance(cmd, click.Group):
            for name in sorted(cmd.commands):
                walk(cmd.commands[name], [*path, name])

    walk(cli, ["ecomarine"])
    return "\n".join(lines)


if __name__ == "__main__":
    out = Path(__file__).with_name("cli.md")
    out.write_text(render())
    sys.stdout.write(f"wrote {out}\n")
