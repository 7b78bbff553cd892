"""Reading user-supplied text files (CSV catalogues, manifests, results) with clear errors."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._files import MiB, read_regular
from .errors import DataError

__all__ = [
    "MAX_TEXT_BYTES",
    "parse_json",
    "read_csv",
    "read_utf8",
    "spreadsheet_safe",
    "spreadsheet_unsafe",
]

# Characters that make a spreadsheet read a cell as a formula (OWASP CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

#: Largest text file (CSV catalogue, results, manifest) read: 1 GiB.
MAX_TEXT_BYTES = 1024 * MiB


def read_utf8(path: Path, what: str = "file") -> str:
    """The text of ``path`` (UTF-8, a BOM allowed).

    Raises:
        DataError: Missing, not a regular file, too large, unreadable, or not UTF-8; the
            message names the file.
    """

    def fail(reason: str) -> DataError:
        if reason == "no such file":
            reason = f"no such {what}"
        return DataError(f"{path}: {reason}")

    data = read_regular(path, fail, max_bytes=MAX_TEXT_BYTES)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def parse_json(text: str | bytes, fail: Callable[[str], Exception]) -> Any:
    """``json.loads`` whose every failure is ``fail(reason)``.

    Bad syntax, nesting too deep for the parser and integers too long to convert alike.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(f"invalid JSON ({exc})") from exc
    except RecursionError as exc:
        raise fail("invalid JSON (nested too deeply)") from exc
    except (ValueError, UnicodeDecodeError) as exc:  # e.g. int digits over the limit
        raise fail(f"invalid JSON ({exc})") from exc


def read_csv(path: Path, what: str = "CSV file") -> tuple[list[str], list[dict[str, str]]]:
    """Column names (stripped) and rows of a UTF-8 CSV file; quoted newlines are kept."""
    reader = csv.DictReader(io.StringIO(read_utf8(path, what), newline=""))
    rows = []
    try:
        for row in reader:
            if None in row:  # DictReader files surplus cells under the key None
                raise DataError(f"{path}:{reader.line_num}: more cells than columns")
            rows.append({str(k).strip(): (v or "").strip() for k, v in row.items()})
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from exc
    return [f.strip() for f in (reader.fieldnames or [])], rows


def spreadsheet_safe(value: object) -> object:
    """A CSV cell that a spreadsheet will not run as a formula.

    Text starting with ``= + - @``, a tab or a carriage return gets a leading ``'``
    (OWASP's advice for CSV injection); numbers, and text that is a number (``-150.2``),
    are left alone.
    """
    if not isinstance(value, str) or not value.startswith(_FORMULA_START):
        return value
    try:
        float(value)
    except ValueError:
        return "'" + value
    return value


def spreadsheet_unsafe(cell: str) -> str:
    """Undo :func:`spreadsheet_safe` on a cell read back from a file ecomarine wrote."""
    if cell.startswith("'") and cell[1:].startswith(_FORMULA_START):
        return cell[1:]
    return cell
