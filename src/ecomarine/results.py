"""Results files: predictions streamed to JSON lines or CSV, read back, and resumed.

Each prediction is appended and flushed to disk (``fsync``) as soon as it is made, so a
run that crashes at photo 9,000 of 10,000 keeps 9,000 results, and ``resume`` continues
after the last complete record (a half-written last line is dropped and redone).

JSON lines hold every field of :class:`~ecomarine.types.Prediction` (or, for sightings,
:class:`~ecomarine.types.SightingPrediction` with its photos). CSV holds the same fields,
one record per physical line, with ``candidates`` (and a sighting's ``photos`` and
``evidence``) as JSON beside readable ``best_match`` and ``score`` columns, so both
formats read back into equal records (``ecomarine export-dwc`` takes either). A file
holds one kind of record.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

from ._text import parse_json, read_utf8, spreadsheet_safe, spreadsheet_unsafe
from .errors import DataError
from .types import Prediction, SightingPrediction

#: One record of a results file: a photo's prediction or a sighting's.
Record = Prediction | SightingPrediction

__all__ = [
    "CSV_COLUMNS",
    "RESULT_SUFFIXES",
    "SIGHTING_CSV_COLUMNS",
    "Record",
    "ResultsWriter",
    "completed_sources",
    "flat_record",
    "iter_results",
    "read_results",
]

RESULT_SUFFIXES: Final = (".csv", ".jsonl")

#: CSV columns, in order. ``best_match`` and ``score`` repeat the first candidate for
#: people reading the table; ``candidates`` (JSON) is what reads back.
CSV_COLUMNS: Final = (
    "source",
    "is_cetacean",
    "gate_score",
    "individual_id",
    "is_new_individual",
    "best_match",
    "score",
    "candidate_source",
    "p_known",
    "candidate_set",
    "alpha",
    "species",
    "species_score",
    "new_individual_threshold",
    "rejection_reason",
    "looks_like",
    "candidates",
    "error",
    "sha256",
    "model_id",
    "model_license",
)
_BOOLS = ("is_cetacean", "is_new_individual")
_NUMBERS = ("gate_score", "species_score", "new_individual_threshold", "p_known", "alpha")

#: CSV columns of sighting results (``photos`` and ``evidence`` as JSON).
SIGHTING_CSV_COLUMNS: Final = (
    "sighting_id",
    "individual_id",
    "is_new_individual",
    "best_match",
    "score",
    "n_photos",
    "n_accepted",
    "candidate_source",
    "species",
    "species_score",
    "new_individual_threshold",
    "aggregation",
    "p_known",
    "candidate_set",
    "alpha",
    "rejection_reason",
    "candidates",
    "photos",
    "evidence",
    "model_id",
    "model_license",
)
_DERIVED = ("best_match", "score", "n_photos", "n_accepted")
_JSON_CELLS = ("candidates", "photos", "evidence", "candidate_set")


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in RESULT_SUFFIXES:
        raise DataError(f"{path}: results must end in .csv or .jsonl")
    return suffix


def _one_line(value: object) -> object:
    # One record per physical line: resuming can then trust line boundaries.
    if isinstance(value, str):
        return value.replace("\r", " ").replace("\n", " ")
    return value


def _columns_of(record: Record) -> tuple[str, ...]:
    return SIGHTING_CSV_COLUMNS if isinstance(record, SightingPrediction) else CSV_COLUMNS


def flat_record(record: Record) -> dict[str, Any]:
    """A record as the flat columns of the CLI's CSV, with their types kept.

    Booleans and numbers stay booleans and numbers (``None`` when absent); lists
    (candidates, the candidate set, a sighting's photos and evidence) are JSON text.
    """
    data = record.to_dict()
    best = record.candidates[0] if record.candidates else None
    data["best_match"] = best.individual_id if best else None
    data["score"] = best.score if best else None
    if isinstance(record, SightingPrediction):
        data["n_photos"] = len(record.photos)
        data["n_accepted"] = len(record.accepted_photos)
    for key in _JSON_CELLS:
        if key in data and data[key] is not None:
            data[key] = json.dumps(data[key], ensure_ascii=False)
    return {c: data[c] for c in _columns_of(record)}


def _csv_row(record: Record) -> list[object]:
    return [
        spreadsheet_safe(_one_line("" if value is None else value))
        for value in flat_record(record).values()
    ]


def _json_fail(where: str, key: str) -> Callable[[str], DataError]:
    def fail(why: str) -> DataError:
        return DataError(
            f"{where}: {key!r} is not JSON ({why}); files written before ecomarine 0.1.0 "
            "kept no scores: re-run identify, or use its .jsonl output"
        )

    return fail


def _from_csv_row(row: dict[str, str], where: str, sighting: bool) -> Record:
    """A CSV row as the dict ``to_dict`` makes, then the record."""
    data: dict[str, Any] = {
        k: spreadsheet_unsafe(v) or None for k, v in row.items() if k not in _DERIVED
    }
    for key in _BOOLS:
        if key not in data:
            continue
        if data[key] not in ("True", "False", None):
            raise DataError(f"{where}: {key} must be True or False, got {data[key]!r}")
        data[key] = data[key] == "True"
    for key in _NUMBERS:
        if data.get(key) is not None:
            try:
                data[key] = float(data[key])
            except ValueError as exc:
                raise DataError(f"{where}: {key} is not a number: {data[key]!r}") from exc
    for key in _JSON_CELLS:
        if key not in data:
            continue
        if key == "candidate_set" and not data[key]:
            continue  # no calibration data: no set
        data[key] = parse_json(
            data[key] or ("{}" if key == "evidence" else "[]"), _json_fail(where, key)
        )
    try:
        if sighting:
            return SightingPrediction.from_dict(data)
        return Prediction.from_dict(data)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from exc


def iter_results(path: str | os.PathLike[str]) -> Iterator[Record]:
    """The records of a results file (``.jsonl`` or ``.csv``), in file order.

    Raises:
        DataError: Unreadable file, a line that is not a record (naming the line),
            or CSV columns that are not ecomarine's.
    """
    where = Path(path)
    suffix = _format(where)
    text = read_utf8(where, "results file")
    if suffix == ".jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue

            def fail(why: str, n: int = n) -> DataError:
                return DataError(f"{where}:{n}: not JSON ({why})")

            record = parse_json(line, fail)
            try:
                if isinstance(record, dict) and "sighting_id" in record:
                    yield SightingPrediction.from_dict(record)
                else:
                    yield Prediction.from_dict(record)
            except DataError as exc:
                raise DataError(f"{where}:{n}: {exc}") from exc
        return
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = tuple(reader.fieldnames or ())
    sighting = "sighting_id" in columns
    expected = SIGHTING_CSV_COLUMNS if sighting else CSV_COLUMNS
    key = "sighting_id" if sighting else "source"
    missing = [c for c in (key, "candidates") if c not in columns]
    if missing:
        raise DataError(
            f"{where}: not an ecomarine results CSV (missing column(s) {missing}; "
            f"found {list(columns)})"
        )
    unknown = sorted(set(columns) - set(expected))
    if unknown:
        raise DataError(f"{where}: unknown column(s) {unknown}")
    try:
        for row in reader:
            if None in row:
                raise DataError(f"{where}:{reader.line_num}: more cells than columns")
            yield _from_csv_row(
                {k: v or "" for k, v in row.items()}, f"{where}:{reader.line_num}", sighting
            )
    except csv.Error as exc:
        raise DataError(f"{where}: malformed CSV ({exc})") from exc


def read_results(path: str | os.PathLike[str]) -> list[Record]:
    """All records of a results file; see :func:`iter_results`."""
    return list(iter_results(path))


def completed_sources(path: str | os.PathLike[str]) -> set[str]:
    """Photos (``source``) or sightings (``sighting_id``) already in a results file.

    A half-written last line is dropped first.

    Used to resume an interrupted run: the file is cut back to its last complete record
    (what a crash mid-write leaves), then read.

    Raises:
        DataError: As :func:`iter_results`.
    """
    where = Path(path)
    _format(where)
    with where.open("rb+") as fh:
        data = fh.read()
        if data and not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)
            fh.flush()
            os.fsync(fh.fileno())
    out: set[str] = set()
    for record in iter_results(where):
        if isinstance(record, SightingPrediction):
            out.add(record.sighting_id)
        elif record.source is not None:
            out.add(record.source)
    return out


class ResultsWriter:
    """Append predictions to a ``.jsonl`` or ``.csv`` file, each one on disk when written.

    Args:
        path: The results file.
        append: Continue an existing file (resume); otherwise it is created, replacing a
            previous file.
        sightings: The file holds :class:`~ecomarine.types.SightingPrediction` records
            (their CSV columns differ).

    Example:
        >>> with ResultsWriter("out.jsonl") as w:  # doctest: +SKIP
        ...     for pred in pipe.predict_many(paths):
        ...         w.write(pred)
    """

    def __init__(
        self, path: str | os.PathLike[str], *, append: bool = False, sightings: bool = False
    ) -> None:
        self.path = Path(path)
        self.suffix = _format(self.path)
        self.count = 0
        self.sightings = sightings
        columns = SIGHTING_CSV_COLUMNS if sightings else CSV_COLUMNS
        fresh = not append or not self.path.exists() or self.path.stat().st_size == 0
        if append and not fresh and self.suffix == ".csv":
            with self.path.open(encoding="utf-8-sig", newline="") as fh:
                header = fh.readline()
            if next(csv.reader([header]), []) != list(columns):
                raise DataError(f"{self.path}: its columns are not this version's; cannot resume")
        self._fh: IO[str] = self.path.open("a" if append else "w", encoding="utf-8", newline="")
        if fresh and self.suffix == ".csv":
            self._emit(_csv_line(list(columns)))

    def _emit(self, text: str) -> None:
        self._fh.write(text)
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def write(self, record: Record) -> None:
        """Append one record and flush it to disk.

        Raises:
            DataError: For a record of the other kind than the file holds.
        """
        if isinstance(record, SightingPrediction) != self.sightings:
            raise DataError(
                f"{self.path}: holds {'sighting' if self.sightings else 'photo'} records"
            )
        if self.suffix == ".jsonl":
            self._emit(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
        else:
            self._emit(_csv_line(_csv_row(record)))
        self.count += 1

    def close(self) -> None:
        """Close the file."""
        with contextlib.suppress(OSError):
            self._fh.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _csv_line(cells: list[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()
