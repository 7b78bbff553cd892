"""The ``ecomarine`` command-line interface.

Every user error prints a single ``error: ...`` line to stderr and exits with code 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

from . import _dwc, _gallery, _gate, _identify, _models, _review, _serve, _train  # noqa: F401 - register commands
from ._app import EXIT_USAGE, cli, main

__all__ = ["EXIT_USAGE", "cli", "main"]
