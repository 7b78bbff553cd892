"""Catalogue CSVs: labelled photos of known individuals (``Sample``), and a fixed split.

The library's own low-level reader: galleries, evaluation, calibration and training all read
catalogues through it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._text import read_csv
from .errors import DataError

__all__ = [
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "Sample",
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


def read_catalog_csv(
    csv_path: str | Path, images_dir: str | Path | None = None, *, check_files: bool = True
) -> list[Sample]:
    """Read a catalogue CSV: ``image,individual_id[,species,encounter,date,latitude,longitude]``.

    Args:
        csv_path: The CSV file (UTF-8, optionally with a BOM).
        images_dir: Folder that ``image`` paths are relative to (default: the CSV's).
        check_files: Refuse the CSV when image files are missing.

    Raises:
        DataError: Missing columns, bad encoding, empty ids, bad coordinates, duplicate
            rows, or missing image files; the message names the file and line.
    """
    path = Path(csv_path)
    root = Path(images_dir) if images_dir is not None else path.parent
    fields, rows = read_csv(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in fields]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {fields}")
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
