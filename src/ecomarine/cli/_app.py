"""The ``ecomarine`` command-line interface.

Every user error prints a single ``error: ...`` line to stderr and exits with code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import click

from .._version import __version__
from ..errors import EcomarineError
from ..zoo import LICENSE_LOGGER

__all__ = ["cli", "main"]

EXIT_USAGE = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="ecomarine")
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logging.")
@click.option("-v", "--verbose", is_flag=True, help="Log progress information.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """Identify individual whales and dolphins from photographs."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # The licence of imported weights is always said when they load, whatever the level.
    logging.getLogger(LICENSE_LOGGER).setLevel(min(level, logging.INFO))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (the console-script entry point).

    Args:
        argv: Arguments without the program name; defaults to ``sys.argv[1:]``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="ecomarine", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except click.ClickException as exc:
        if debug:
            raise
        click.echo(f"error: {_one_line(exc.format_message())}", err=True)
        return EXIT_USAGE
    except (EcomarineError, OSError) as exc:
        if debug:
            raise
        click.echo(f"error: {_one_line(str(exc))}", err=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
