"""Reading user-supplied text files (CSV catalogues, manifests, results) with clear errors."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .errors import DataError

__all__ = ["read_csv", "read_utf8"]


def read_utf8(path: Path, what: str = "file") -> str:
    """The text of ``path`` (UTF-8, a BOM allowed).

    Raises:
        DataError: Missing, unreadable, or not UTF-8; the message names the file.
    """
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such {what}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc


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
