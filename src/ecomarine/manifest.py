"""Gate manifests: ``relpath,label[,group]`` CSVs of labelled photos."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ._text import read_csv
from .errors import DataError

__all__ = ["ManifestEntry", "read_gate_manifest"]

POSITIVE, NEGATIVE = "cetacean", "non_cetacean"


@dataclass(frozen=True)
class ManifestEntry:
    """One labelled photo: its path, whether it is a cetacean photo, and its group."""

    path: Path
    is_cetacean: bool
    group: str


def read_gate_manifest(path: str | Path) -> list[ManifestEntry]:
    """Read a manifest; paths are relative to the manifest's folder.

    Raises:
        DataError: Missing columns, unknown labels, bad encoding or missing files.
    """
    manifest = Path(path)
    fields, rows = read_csv(manifest, "manifest")
    if "relpath" not in fields or "label" not in fields:
        raise DataError(f"{manifest}: needs columns relpath,label[,group]; found {fields}")
    out = []
    for line, row in enumerate(rows, start=2):
        label = (row.get("label") or "").strip()
        if label not in (POSITIVE, NEGATIVE):
            raise DataError(
                f"{manifest}:{line}: label must be {POSITIVE} or {NEGATIVE}, got {label!r}"
            )
        file = manifest.parent / (row.get("relpath") or "").strip()
        if not file.is_file():
            raise DataError(f"{manifest}:{line}: no such file {file}")
        group = (row.get("group") or "").strip() or label
        out.append(ManifestEntry(file, label == POSITIVE, group))
    if not out:
        raise DataError(f"{manifest}: no rows")
    return out
