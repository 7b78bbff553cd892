"""Catalogue CSVs: labelled photos of known individuals (``Sample``), and a fixed split.

The library's own low-level reader: galleries, evaluation, calibration and training all read
catalogues through it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._text import read_csv
from .errors import DataError

__all__ = [
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "Sample",
    "check_column_map",
    "read_catalog_csv",
    "split_by_group_hash",
]

REQUIRED_COLUMNS = ("image", "individual_id")
OPTIONAL_COLUMNS = ("species", "encounter", "date", "latitude", "longitude")


@dataclass(frozen=True)
class Sample:
    """One labelled photo of a catalogue.

    Attributes:
        path: Absolute path of the image file.
        image: The ``image`` cell as written in the CSV.
        individual_id: Who it is.
        species: Species label, if given.
        encounter: Encounter (sighting) id, if given.
        date: Date string, if given.
        latitude: Decimal latitude, if given. longitude: Decimal longitude, if given.
    """

    path: Path
    image: str
    individual_id: str
    species: str | None = None
    encounter: str | None = None
    date: str | None = None
    latitude: float | None = None
    longitude: float | None = None

    def metadata(self) -> dict[str, Any]:
        """Gallery metadata for this photo (only the fields that are set)."""
        out: dict[str, Any] = {"source": self.image}
        for key in ("encounter", "date", "latitude", "longitude"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


def check_column_map(columns: Mapping[str, str] | None) -> dict[str, str]:
    """A column mapping (our name -> the CSV's column), checked.

    Raises:
        DataError: For a key that is not one of :data:`REQUIRED_COLUMNS` or
            :data:`OPTIONAL_COLUMNS`, an empty column name, or two names on one column.
    """
    mapping = dict(columns or {})
    known = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
    for ours, theirs in mapping.items():
        if ours not in known:
            raise DataError(f"unknown catalogue field {ours!r}; expected one of {list(known)}")
        if not theirs.strip():
            raise DataError(f"empty column name for {ours!r}")
    taken = list(mapping.values())
    if len(set(taken)) != len(taken):
        raise DataError(f"one CSV column mapped to several fields: {mapping}")
    return mapping


def read_catalog_csv(
    csv_path: str | Path,
    images_dir: str | Path | None = None,
    *,
    check_files: bool = True,
    columns: Mapping[str, str] | None = None,
) -> list[Sample]:
    """Read a catalogue CSV: ``image,individual_id[,species,encounter,date,latitude,longitude]``.

    Args:
        csv_path: The CSV file (UTF-8, optionally with a BOM).
        images_dir: Folder that ``image`` paths are relative to (default: the CSV's).
        check_files: Refuse the CSV when image files are missing.
        columns: The CSV's own column names, by field: ``{"individual_id": "whale_id",
            "image": "path"}``. Fields not given use their own name.

    Raises:
        DataError: Missing columns, bad encoding, empty ids, bad coordinates, duplicate
            rows, or missing image files; the message names the file and line.
    """
    path = Path(csv_path)
    root = Path(images_dir) if images_dir is not None else path.parent
    mapping = check_column_map(columns)
    fields, raw_rows = read_csv(path)
    missing = [mapping.get(c, c) for c in REQUIRED_COLUMNS if mapping.get(c, c) not in fields]
    absent = [theirs for theirs in mapping.values() if theirs not in fields]
    if missing or absent:
        hint = "" if mapping else " (map your own names with --id-column/--image-column/--column)"
        raise DataError(
            f"{path}: missing column(s) {sorted(set(missing + absent))}; found {fields}{hint}"
        )
    rows = [
        {
            ours: row.get(mapping.get(ours, ours), "")
            for ours in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
        }
        for row in raw_rows
    ]
    samples: list[Sample] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        image, ind = row.get("image", ""), row.get("individual_id", "")
        if not image or not ind:
            raise DataError(f"{path}:{line}: empty image or individual_id")
        if image in seen:
            raise DataError(f"{path}:{line}: duplicate image {image!r}")
        seen.add(image)
        samples.append(
            Sample(
                path=(root / image).resolve(),
                image=image,
                individual_id=ind,
                species=row.get("species") or None,
                encounter=row.get("encounter") or None,
                date=row.get("date") or None,
                latitude=_coord(row.get("latitude"), -90, 90, path, line),
                longitude=_coord(row.get("longitude"), -180, 180, path, line),
            )
        )
    if not samples:
        raise DataError(f"{path}: no rows")
    if check_files:
        absent = [s.image for s in samples if not s.path.is_file()]
        if absent:
            raise DataError(
                f"{path}: {len(absent)} image file(s) not found under {root}, e.g. {absent[:3]}"
            )
    return samples


def _coord(value: str | None, lo: float, hi: float, path: Path, line: int) -> float | None:
    if not value:
        return None
    try:
        x = float(value)
    except ValueError as exc:
        raise DataError(f"{path}:{line}: not a number: {value!r}") from exc
    if not lo <= x <= hi:
        raise DataError(f"{path}:{line}: coordinate {x} outside [{lo}, {hi}]")
    return x


def split_by_group_hash(
    samples: Sequence[Sample], fraction: float
) -> tuple[list[Sample], list[Sample]]:
    """Hold out a fixed ``fraction`` of encounters (by a hash of the encounter id).

    The split depends only on the ids, so it is the same on every run and machine.
    Samples without an encounter are grouped by image. Returns ``(kept, held_out)``.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError("calibration fraction must be in [0, 1)")
    kept: list[Sample] = []
    held: list[Sample] = []
    for s in samples:
        group = s.encounter or s.image
        bucket = int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (held if bucket < fraction else kept).append(s)
    return kept, held
