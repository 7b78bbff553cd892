"""Darwin Core occurrence records and GBIF-ready Darwin Core Archives.

One ``Occurrence`` per accepted prediction (``basisOfRecord = MachineObservation``),
with the individual as ``organismID`` (only for a catalogue match), a stable
``occurrenceID``, taxon terms from :mod:`ecomarine.species` (falling back to *Cetacea*
when the species has no evidence), date and coordinates from EXIF unless a sidecar or
the caller supplies them, and a Simple Multimedia extension row linking each image.

``occurrenceID`` is ``urn:ecomarine:<dataset id>:<first 32 hex digits of the photo's
SHA-256>``: it depends only on the photo's content and the dataset, never on the model,
so re-running with a better model and re-publishing updates GBIF's records instead of
duplicating them. The model that made each identification is named in ``identifiedBy``,
``identificationRemarks`` and the EML's methods.

Archives are tab-separated UTF-8 with quoted fields (so tabs and newlines inside values
survive), and are written atomically.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree as ET

from ._atomic import atomic_write
from ._files import safe_is_file
from ._text import read_csv, spreadsheet_safe
from ._version import __version__
from .errors import DataError
from .exif import read_exif_event
from .review._decisions import review_key
from .species import CETACEA, lookup_species
from .types import Prediction, SightingPrediction, rejection_text

__all__ = [
    "LICENSES",
    "MULTIMEDIA_TERMS",
    "OCCURRENCE_TERMS",
    "USER_TERMS",
    "DatasetMetadata",
    "license_uri",
    "occurrence_id",
    "read_sidecar",
    "sighting_occurrence_id",
    "to_multimedia",
    "to_occurrences",
    "write_dwca",
]

DWC = "http://rs.tdwg.org/dwc/terms/"
DC = "http://purl.org/dc/terms/"
OCCURRENCE_ROW = DWC + "Occurrence"
MULTIMEDIA_ROW = "http://rs.gbif.org/terms/1.0/Multimedia"

#: The licences GBIF accepts for occurrence data, by short name.
LICENSES: dict[str, str] = {
    "CC0-1.0": "http://creativecommons.org/publicdomain/zero/1.0/legalcode",
    "CC-BY-4.0": "http://creativecommons.org/licenses/by/4.0/legalcode",
    "CC-BY-NC-4.0": "http://creativecommons.org/licenses/by-nc/4.0/legalcode",
}

#: Terms a caller may set (defaults, sidecar columns, per-image values); ecomarine fills
#: in the rest. Columns appear in the archive only when some record has a value.
USER_TERMS: tuple[str, ...] = (
    "institutionCode",
    "collectionCode",
    "datasetName",
    "datasetID",
    "license",
    "rightsHolder",
    "accessRights",
    "bibliographicCitation",
    "references",
    "recordedBy",
    "recordNumber",
    "eventID",
    "parentEventID",
    "eventDate",
    "eventTime",
    "habitat",
    "samplingProtocol",
    "samplingEffort",
    "fieldNumber",
    "fieldNotes",
    "eventRemarks",
    "locationID",
    "higherGeography",
    "waterBody",
    "country",
    "countryCode",
    "stateProvince",
    "locality",
    "locationRemarks",
    "decimalLatitude",
    "decimalLongitude",
    "geodeticDatum",
    "coordinateUncertaintyInMeters",
    "minimumDepthInMeters",
    "maximumDepthInMeters",
    "sex",
    "lifeStage",
    "behavior",
    "organismName",
    "organismRemarks",
)
_DC_TERMS = ("license", "rightsHolder", "accessRights", "bibliographicCitation", "references")
_COMPUTED_TERMS = (
    "scientificName",
    "vernacularName",
    "taxonRank",
    "kingdom",
    "phylum",
    "class",
    "order",
    "family",
    "higherClassification",
    "organismID",
    "occurrenceRemarks",
    "identifiedBy",
    "dateIdentified",
    "identificationVerificationStatus",
    "identificationRemarks",
    "associatedMedia",
    "individualCount",
)
#: Every core column ecomarine may write, in order, with its term URI.
OCCURRENCE_TERMS: dict[str, str] = {
    name: (DC if name in _DC_TERMS else DWC) + name
    for name in ("occurrenceID", "basisOfRecord", *USER_TERMS, *_COMPUTED_TERMS)
}
#: Always written, even when empty.
_ALWAYS = (
    "occurrenceID",
    "basisOfRecord",
    "license",
    "recordedBy",
    "eventDate",
    "decimalLatitude",
    "decimalLongitude",
    "geodeticDatum",
    *[t for t in _COMPUTED_TERMS if t != "individualCount"],
)
#: Simple Multimedia extension columns (after the core id).
MULTIMEDIA_TERMS: dict[str, str] = {
    name: DC + name
    for name in (
        "type",
        "format",
        "identifier",
        "title",
        "created",
        "creator",
        "license",
        "rightsHolder",
    )
}
_DATASET_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Column names a sidecar CSV may use for the photo.
SIDECAR_PHOTO_COLUMNS = ("photo", "image", "source", "file")


def license_uri(value: str) -> str:
    """The licence URI for a short name (``CC-BY-4.0``) or one of GBIF's licence URIs.

    Raises:
        DataError: For any other licence (GBIF accepts only CC0, CC-BY and CC-BY-NC).
    """

    def norm(text: str) -> str:
        text = text.strip().lower().replace("https://", "http://").rstrip("/")
        return text.removesuffix("/legalcode").rstrip("/")

    for name, uri in LICENSES.items():
        if norm(value) in (name.lower(), norm(uri)):
            return uri
    raise DataError(
        f"licence {value!r} is not one GBIF accepts; choose one of {', '.join(LICENSES)}"
    )


def dataset_slug(title: str) -> str:
    """A dataset id made from a title: lowercase words joined by ``-`` (at most 64)."""
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:64].strip("-")
    return slug or "dataset"


@dataclass(frozen=True)
class DatasetMetadata:
    """Dataset-level metadata for ``eml.xml`` and default record values.

    Attributes:
        title: Dataset title.
        publisher: Publishing organisation.
        license: Required: a short name from :data:`LICENSES` or its URI (GBIF accepts
            CC0, CC-BY 4.0 and CC-BY-NC 4.0). There is no default: publishing data under
            a licence is the data owner's choice.
        description: Abstract.
        contact_name: Resource contact's name.
        contact_email: Resource contact's e-mail.
        recorded_by: Default ``recordedBy``.
        institution_code: Default ``institutionCode``.
        language: ISO 639-1 code.
        dataset_id: The dataset part of every ``occurrenceID`` (letters, digits, ``.``,
            ``_``, ``-``); default: made from the title. Keep it fixed across re-exports.
        extra_defaults: Values of other user terms for every record.
    """

    title: str = "Cetacean photo-identifications made with ecomarine"
    publisher: str = "unknown"
    license: str | None = None
    description: str = "Machine identifications of individual cetaceans from photographs."
    contact_name: str | None = None
    contact_email: str | None = None
    recorded_by: str | None = None
    institution_code: str | None = None
    language: str = "en"
    dataset_id: str | None = None
    extra_defaults: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.dataset_id is not None and not _DATASET_ID.match(self.dataset_id):
            raise DataError(
                f"dataset id {self.dataset_id!r}: use 1-64 letters, digits, '.', '_' or '-'"
            )

    @property
    def resolved_dataset_id(self) -> str:
        """The dataset id in occurrence ids: :attr:`dataset_id`, else from the title."""
        return self.dataset_id or dataset_slug(self.title)

    def license_uri(self) -> str:
        """The licence URI.

        Raises:
            DataError: When no licence was chosen, or GBIF does not accept it.
        """
        if not self.license:
            raise DataError(
                "choose a licence for the records (GBIF accepts "
                f"{', '.join(LICENSES)}); nothing is published under a default"
            )
        return license_uri(self.license)


def occurrence_id(pred: Prediction, dataset_id: str) -> str:
    """The stable ``occurrenceID`` of a photo's record: dataset + photo content.

    Photos without a content hash (in-memory sources) fall back to a hash of ``source``.
    """
    content = pred.sha256 or hashlib.sha256((pred.source or "").encode()).hexdigest()
    return f"urn:ecomarine:{dataset_id}:{content[:32]}"


def _remarks(what: Prediction | SightingPrediction) -> str:
    """``identificationRemarks`` of a photo or a sighting: model, scores, candidates, sets."""
    parts = [f"model {what.model_id or 'unknown'}"]
    sighting = isinstance(what, SightingPrediction)
    if isinstance(what, SightingPrediction):
        parts.append(
            f"sighting {what.sighting_id}: {len(what.accepted_photos)} of {len(what.photos)} "
            f"photos identified together ({what.aggregation or 'n/a'} aggregation)"
        )
    elif what.gate_score is not None:
        parts.append(f"gate score {what.gate_score:.3f}")
    if what.candidates:
        best = what.candidates[0]
        if what.candidate_source == "head":
            parts.append("candidates from the model's own training individuals, not a catalogue")
        if not sighting:
            parts.append(f"best match {best.individual_id} ({best.score:.3f})")
        parts.append(
            "candidates: " + ", ".join(f"{m.individual_id} {m.score:.3f}" for m in what.candidates)
        )
    if what.new_individual_threshold is not None:
        kind = "sighting" if sighting else "new-individual"
        parts.append(f"{kind} threshold {what.new_individual_threshold:.3f}")
    if what.p_known is not None:
        parts.append(f"p_known {what.p_known:.3f}")
    if what.candidate_set is not None and what.alpha is not None:
        parts.append(f"{1 - what.alpha:.0%} candidate set: {', '.join(what.candidate_set)}")
    if what.species is None and what.accepted:
        parts.append("species not determined (no evidence beyond Cetacea)")
    if what.rejection_reason:
        parts.append(rejection_text(what))
    return "; ".join(parts)


def _check_terms(values: Mapping[str, str], where: str) -> None:
    for key, value in values.items():
        if key not in USER_TERMS:
            raise DataError(
                f"{where}: {key!r} is not a Darwin Core term you can set: {list(USER_TERMS)}"
            )
        if key in ("decimalLatitude", "decimalLongitude") and value:
            bound = 90.0 if key == "decimalLatitude" else 180.0
            try:
                x = float(value)
            except ValueError as exc:
                raise DataError(f"{where}: {key} {value!r} is not a number") from exc
            if not (math.isfinite(x) and -bound <= x <= bound):
                raise DataError(f"{where}: {key} {value!r} outside [-{bound:g}, {bound:g}]")


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """Per-photo Darwin Core values from a CSV: a photo column plus term columns.

    The photo column is named ``photo`` (or ``image``, ``source``, ``file``) and holds the
    path as given to ``ecomarine identify``, the path relative to the input folder, or
    the file name; every other column must be a term of :data:`USER_TERMS`
    (``eventDate``, ``decimalLatitude``, ``locality``, ``recordedBy``, ...). Empty cells
    are left out, so EXIF or defaults fill them.

    Raises:
        DataError: No photo column, unknown terms, duplicate photos or bad coordinates;
            the message names the file and line.
    """
    where = Path(path)
    columns, rows = read_csv(where, "sidecar CSV")
    photo_col = next((c for c in SIDECAR_PHOTO_COLUMNS if c in columns), None)
    if photo_col is None:
        raise DataError(f"{where}: no photo column (one of {list(SIDECAR_PHOTO_COLUMNS)})")
    unknown = [c for c in columns if c != photo_col and c not in USER_TERMS]
    if unknown:
        raise DataError(
            f"{where}: column(s) {unknown} are not Darwin Core terms you can set: {list(USER_TERMS)}"
        )
    out: dict[str, dict[str, str]] = {}
    for line, row in enumerate(rows, start=2):
        photo = row.get(photo_col, "")
        if not photo:
            raise DataError(f"{where}:{line}: empty {photo_col}")
        if photo in out:
            raise DataError(f"{where}:{line}: photo {photo!r} appears twice")
        values = {k: v for k, v in row.items() if k != photo_col and v}
        _check_terms(values, f"{where}:{line}")
        out[photo] = values
    return out


class _PerImage:
    """Per-photo values found by the photo's path, its path under a root, or its name."""

    def __init__(self, values: Mapping[str, Mapping[str, str]], root: Path | None) -> None:
        self.values = values
        self.root = root
        names: dict[str, list[str]] = {}
        for key in values:
            names.setdefault(PurePosixPath(key.replace("\\", "/")).name, []).append(key)
        self.by_name = {n: keys[0] for n, keys in names.items() if len(keys) == 1}
        self.used: set[str] = set()

    def get(self, source: str | None) -> Mapping[str, str]:
        if not source:
            return {}
        keys = [source, Path(source).as_posix()]
        relative = _relative(source, self.root)
        if relative is not None:
            keys.append(relative)
        keys.append(self.by_name.get(Path(source).name, ""))
        for key in keys:
            if key in self.values:
                self.used.add(key)
                return self.values[key]
        return {}


def _relative(source: str, root: Path | None) -> str | None:
    """``source`` relative to ``root`` in POSIX form, or ``None`` when it is not under it."""
    if root is None:
        return None
    try:
        return Path(source).resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None


def media_url(source: str, base_url: str | None, root: Path | None) -> str:
    """Where a photo can be found: ``base_url`` + its path under ``root``, else the path.

    Raises:
        DataError: With a base URL, for a photo outside ``root`` (or absolute, without one).
    """
    if not base_url:
        return source
    relative = _relative(source, root) if root is not None else None
    if relative is None:
        if root is not None or Path(source).is_absolute():
            raise DataError(
                f"{source}: not under the media root {root or '(none)'}; cannot make its URL"
            )
        relative = Path(source).as_posix()
    return base_url.rstrip("/") + "/" + quote(relative)


@dataclass(frozen=True)
class HumanReview:
    """A person's decision on a photo or sighting (see :mod:`ecomarine.review`).

    Attributes:
        action: ``confirm``, ``new_individual``, ``skip`` or ``not_cetacean``.
        individual_id: The individual confirmed or created.
        reviewer: Who decided (``identifiedBy``).
        at: When (ISO 8601; ``dateIdentified``).
    """

    action: str
    individual_id: str | None
    reviewer: str
    at: str


def to_occurrences(
    predictions: Iterable[Prediction | SightingPrediction],
    *,
    reviews: Mapping[str, HumanReview] | None = None,
    dataset: DatasetMetadata | None = None,
    defaults: Mapping[str, str] | None = None,
    per_image: Mapping[str, Mapping[str, str]] | None = None,
    include_rejected: bool = False,
    read_exif: bool = True,
    media_base_url: str | None = None,
    media_root: str | os.PathLike[str] | None = None,
) -> list[dict[str, str]]:
    """Darwin Core Occurrence records (term name -> value) for predictions or sightings.

    A photo's values are filled in this order, later ones winning: EXIF (date,
    coordinates), the dataset's and ``defaults``' values, then ``per_image``.

    An occurrence is an organism at a place and time, so a
    :class:`~ecomarine.types.SightingPrediction` is **one** occurrence: ``individualCount``
    1, ``eventID`` the sighting id, the earliest of its photos' dates, the mean of their
    positions (the largest distance from it in ``coordinateUncertaintyInMeters``), its
    accepted photos in ``associatedMedia`` (``|``-separated) and in the multimedia rows.

    Args:
        predictions: Photo predictions (:meth:`Pipeline.predict_many`), sightings
            (:meth:`Pipeline.predict_sightings`), or a results file's records.
        dataset: Supplies the licence (required), ``recordedBy``, ``institutionCode`` and
            the dataset id of the occurrence ids.
        defaults: Values for user terms (``recordedBy``, ``eventDate``, ...) for every record.
        per_image: Values per photo (a sidecar, see :func:`read_sidecar`), keyed by the
            photo's ``source``, its path relative to ``media_root``, or its file name.
        include_rejected: Keep predictions the gate rejected (off by default).
        read_exif: Fill ``eventDate`` and coordinates from the photo's EXIF.
        media_base_url: Where the photos are published (``https://…/photos/``);
            ``associatedMedia`` and the multimedia links become this URL plus the photo's
            path relative to ``media_root``. Without it they are local paths, which GBIF
            cannot show.
        media_root: The folder photo paths are made relative to (default: the working
            directory for relative paths).
        reviews: People's decisions by review key
            (:func:`ecomarine.review.review_key`, e.g. from
            :func:`ecomarine.review.human_reviews`): a confirmed or new individual is
            ``identificationVerificationStatus`` "verified by human", ``identifiedBy`` the
            reviewer; a photo judged not a cetacean is left out; the rest stay
            "unverified" machine identifications.

    Raises:
        DataError: For a key that is not a Darwin Core term you can set, bad coordinates,
            no licence, or a photo outside ``media_root`` when a base URL is given.
    """
    return [
        occ.record
        for occ in _Builder(
            dataset, defaults, per_image, read_exif, media_base_url, media_root, reviews
        ).occurrences(predictions, include_rejected)
    ]


@dataclass(frozen=True)
class _Occurrence:
    """A core record and the photos it links to (multimedia rows)."""

    record: dict[str, str]
    photos: tuple[tuple[Prediction, dict[str, str]], ...]


class _Builder:
    """Makes occurrence records: one owner for the order in which values are filled."""

    def __init__(
        self,
        dataset: DatasetMetadata | None,
        defaults: Mapping[str, str] | None,
        per_image: Mapping[str, Mapping[str, str]] | None,
        read_exif: bool,
        media_base_url: str | None,
        media_root: str | os.PathLike[str] | None,
        reviews: Mapping[str, HumanReview] | None = None,
    ) -> None:
        ds = dataset or DatasetMetadata()
        self.reviews = dict(reviews or {})
        base: dict[str, str] = {"license": ds.license_uri(), **ds.extra_defaults}
        if ds.recorded_by:
            base["recordedBy"] = ds.recorded_by
        if ds.institution_code:
            base["institutionCode"] = ds.institution_code
        _check_terms(base, "dataset defaults")
        _check_terms(defaults or {}, "defaults")
        for key, values in (per_image or {}).items():
            _check_terms(values, f"values for {key}")
        base.update(defaults or {})
        self.base = base
        self.root = None if media_root is None else Path(media_root)
        self.lookup = _PerImage(per_image or {}, self.root)
        self.read_exif = read_exif
        self.media_base_url = media_base_url
        self.today = date.today().isoformat()
        self.dataset_id = ds.resolved_dataset_id

    def photo_values(self, pred: Prediction) -> dict[str, str]:
        """A photo's own values: EXIF, then defaults, then its sidecar row."""
        rec = dict.fromkeys(OCCURRENCE_TERMS, "")
        if self.read_exif and pred.source and safe_is_file(pred.source):
            rec.update(read_exif_event(pred.source))
        rec.update({k: v for k, v in self.base.items() if v is not None})
        rec.update(self.lookup.get(pred.source))
        rec["associatedMedia"] = (
            media_url(_media_path(pred.source), self.media_base_url, self.root)
            + _fragment(pred.source)
            if pred.source
            else ""
        )
        return rec

    def occurrences(
        self, records: Iterable[Prediction | SightingPrediction], include_rejected: bool
    ) -> list[_Occurrence]:
        out = []
        for item in records:
            if item.rejection_reason and not include_rejected:
                continue
            review = self.reviews.get(review_key(item))
            if review is not None and review.action == "not_cetacean":
                continue  # a person says there is no cetacean: no occurrence
            if isinstance(item, SightingPrediction):
                out.append(self.sighting(item))
            else:
                rec = self.photo_values(item)
                self.identification(rec, item, occurrence_id(item, self.dataset_id))
                rec["identificationRemarks"] = _remarks(item)
                out.append(_Occurrence(rec, ((item, rec),)))
        return out

    def identification(
        self, rec: dict[str, str], what: Prediction | SightingPrediction, occ_id: str
    ) -> None:
        """Taxon, organism and identification terms of a photo or a sighting."""
        taxon = lookup_species(what.species)
        if taxon is not None:
            rec.update(taxon.terms())
        elif what.species:
            rec.update(CETACEA.terms(), vernacularName=what.species)
        elif what.accepted:
            rec.update(CETACEA.terms())  # the gate's verdict is the evidence: a cetacean
        matched = what.candidate_source == "gallery" and not what.is_new_individual
        rec.update(
            occurrenceID=occ_id,
            basisOfRecord="MachineObservation",
            organismID=(what.individual_id or "") if matched else "",
            occurrenceRemarks="new individual (not in the catalogue)"
            if what.is_new_individual
            else rec["occurrenceRemarks"],
            identifiedBy=f"ecomarine {__version__} (model {what.model_id or 'unknown'})",
            dateIdentified=self.today,
            identificationVerificationStatus="unverified",
        )
        review = self.reviews.get(review_key(what))
        if review is not None and review.action in ("confirm", "new_individual"):
            rec.update(
                organismID=review.individual_id or "",
                identifiedBy=review.reviewer,
                dateIdentified=review.at[:10],
                identificationVerificationStatus="verified by human",
            )
            if review.action == "new_individual":
                rec["occurrenceRemarks"] = "new individual (created by a reviewer)"
            elif rec["occurrenceRemarks"].startswith("new individual"):
                rec["occurrenceRemarks"] = ""  # the reviewer matched it to a known one

    def sighting(self, sighting: SightingPrediction) -> _Occurrence:
        voters = sighting.accepted_photos or sighting.photos
        photos = [(p, self.photo_values(p)) for p in voters]
        rec = dict.fromkeys(OCCURRENCE_TERMS, "")
        # Terms every photo shares (survey defaults, a sidecar's constants) carry over.
        for term in USER_TERMS:
            values = {v[term] for _, v in photos if v[term]}
            if len(values) == 1:
                rec[term] = values.pop()
        dates = [v["eventDate"] for _, v in photos if v["eventDate"]]
        if dates:
            rec["eventDate"] = min(dates, key=_date_key)
        where = [
            (float(v["decimalLatitude"]), float(v["decimalLongitude"]))
            for _, v in photos
            if v["decimalLatitude"] and v["decimalLongitude"]
        ]
        if where:
            lat, lon, spread = _centre(where)
            rec["decimalLatitude"], rec["decimalLongitude"] = f"{lat:.6f}", f"{lon:.6f}"
            if len(where) > 1:
                rec["coordinateUncertaintyInMeters"] = str(max(1, math.ceil(spread)))
        rec["eventID"] = rec["eventID"] or sighting.sighting_id
        rec["individualCount"] = "1"
        rec["associatedMedia"] = " | ".join(v["associatedMedia"] for _, v in photos)
        self.identification(rec, sighting, sighting_occurrence_id(sighting, self.dataset_id))
        rec["identificationRemarks"] = _remarks(sighting)
        return _Occurrence(rec, tuple(photos))


def sighting_occurrence_id(sighting: SightingPrediction, dataset_id: str) -> str:
    """The stable ``occurrenceID`` of a sighting: dataset + the set of its photos' contents.

    The same photos give the same id, whatever the model, the order or the sighting's name.
    """
    parts = sorted(
        p.sha256 or hashlib.sha256((p.source or "").encode()).hexdigest() for p in sighting.photos
    )
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return f"urn:ecomarine:{dataset_id}:sighting:{digest[:32]}"


def _media_path(source: str) -> str:
    """A source without its media fragment (video frames are ``clip.mp4#t=2.000``)."""
    return source.split("#t=", 1)[0]


def _fragment(source: str) -> str:
    return "#t=" + source.split("#t=", 1)[1] if "#t=" in source else ""


def _date_key(text: str) -> tuple[int, str]:
    """Sort ISO dates by instant when they parse (offsets compared), else as text."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return (1, text)
    return (0, f"{when.replace(tzinfo=None).isoformat()}")


def _centre(points: Sequence[tuple[float, float]]) -> tuple[float, float, float]:
    """Mean position (on the sphere) and the largest distance from it, in metres."""
    xyz = [
        (
            math.cos(math.radians(la)) * math.cos(math.radians(lo)),
            math.cos(math.radians(la)) * math.sin(math.radians(lo)),
            math.sin(math.radians(la)),
        )
        for la, lo in points
    ]
    x, y, z = (sum(c[i] for c in xyz) / len(xyz) for i in range(3))
    lat = math.degrees(math.atan2(z, math.hypot(x, y)))
    lon = math.degrees(math.atan2(y, x))
    return lat, lon, max(_haversine(lat, lon, la, lo) for la, lo in points)


def _haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(min(1.0, math.sqrt(a)))


_MEDIA_FORMATS = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "tif": "image/tiff",
    "tiff": "image/tiff",
    "heic": "image/heic",
    "heif": "image/heif",
}


def _multimedia(occurrences: Sequence[_Occurrence]) -> list[dict[str, str]]:
    """One Simple Multimedia row per photo of each occurrence (``coreid`` first)."""
    rows = []
    for occ in occurrences:
        for pred, values in occ.photos:
            if not pred.source:
                continue
            path = _media_path(pred.source)
            suffix = Path(path).suffix.lower().lstrip(".")
            video = "#t=" in pred.source
            rows.append(
                {
                    "coreid": occ.record["occurrenceID"],
                    "type": "MovingImage" if video else "StillImage",
                    "format": _MEDIA_FORMATS.get(suffix, ""),
                    "identifier": values.get("associatedMedia") or pred.source,
                    "title": Path(path).name + _fragment(pred.source),
                    "created": values.get("eventDate", ""),
                    "creator": values.get("recordedBy", ""),
                    "license": values.get("license", ""),
                    "rightsHolder": values.get("rightsHolder", ""),
                }
            )
    return rows


def _built(
    records: Iterable[Prediction | SightingPrediction],
    dataset: DatasetMetadata | None,
    kwargs: dict[str, Any],
) -> list[_Occurrence]:
    """The occurrences for :func:`to_occurrences`' keyword arguments (checked)."""
    options = dict(kwargs)
    include_rejected = bool(options.pop("include_rejected", False))
    builder = _Builder(
        dataset,
        options.pop("defaults", None),
        options.pop("per_image", None),
        options.pop("read_exif", True),
        options.pop("media_base_url", None),
        options.pop("media_root", None),
        options.pop("reviews", None),
    )
    if options:
        raise DataError(f"unknown argument(s) {sorted(options)}")
    return builder.occurrences(records, include_rejected)


def to_multimedia(
    predictions: Iterable[Prediction | SightingPrediction],
    *,
    dataset: DatasetMetadata | None = None,
    **kwargs: Any,
) -> list[dict[str, str]]:
    """The Simple Multimedia rows of :func:`to_occurrences` (same arguments).

    One row per photo (per accepted photo of a sighting), linked to its occurrence.
    """
    return _multimedia(_built(predictions, dataset, kwargs))


def _columns(occurrences: Sequence[Mapping[str, str]]) -> list[str]:
    """Core columns: the fixed ones, plus every user term some record has a value for."""
    used = {k for o in occurrences for k, v in o.items() if v}
    return [t for t in OCCURRENCE_TERMS if t in _ALWAYS or t in used]


def _tsv(header: Sequence[str], rows: Iterable[Mapping[str, str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(
        buf, delimiter="\t", quotechar='"', quoting=csv.QUOTE_MINIMAL, lineterminator="\n"
    )
    writer.writerow(header)
    # Archives are opened in spreadsheets too: no cell may run as a formula.
    for row in rows:
        writer.writerow([spreadsheet_safe(row.get(h, "")) for h in header])
    return buf.getvalue().encode("utf-8")


def _meta_xml(columns: Sequence[str]) -> bytes:
    ET.register_namespace("", "http://rs.tdwg.org/dwc/text/")
    ns = "{http://rs.tdwg.org/dwc/text/}"
    archive = ET.Element(ns + "archive", {"metadata": "eml.xml"})
    attrs = {
        "encoding": "UTF-8",
        "fieldsTerminatedBy": "\\t",
        "linesTerminatedBy": "\\n",
        "fieldsEnclosedBy": '"',
        "ignoreHeaderLines": "1",
    }
    core = ET.SubElement(archive, ns + "core", {**attrs, "rowType": OCCURRENCE_ROW})
    ET.SubElement(ET.SubElement(core, ns + "files"), ns + "location").text = "occurrence.txt"
    ET.SubElement(core, ns + "id", {"index": "0"})
    for i, name in enumerate(columns):
        ET.SubElement(core, ns + "field", {"index": str(i), "term": OCCURRENCE_TERMS[name]})
    ext = ET.SubElement(archive, ns + "extension", {**attrs, "rowType": MULTIMEDIA_ROW})
    ET.SubElement(ET.SubElement(ext, ns + "files"), ns + "location").text = "multimedia.txt"
    ET.SubElement(ext, ns + "coreid", {"index": "0"})
    for i, uri in enumerate(MULTIMEDIA_TERMS.values(), start=1):
        ET.SubElement(ext, ns + "field", {"index": str(i), "term": uri})
    return bytes(ET.tostring(archive, encoding="utf-8", xml_declaration=True))


def _eml_xml(ds: DatasetMetadata, package_id: str, models: Sequence[str]) -> bytes:
    eml_ns = "eml://ecoinformatics.org/eml-2.1.1"
    ET.register_namespace("eml", eml_ns)
    root = ET.Element(
        f"{{{eml_ns}}}eml",
        {
            "packageId": package_id,
            "system": "ecomarine",
            "scope": "system",
            "{http://www.w3.org/XML/1998/namespace}lang": ds.language,
        },
    )
    dataset = ET.SubElement(root, "dataset")
    ET.SubElement(dataset, "title").text = ds.title
    for role in ("creator", "metadataProvider"):
        party = ET.SubElement(dataset, role)
        ET.SubElement(party, "organizationName").text = ds.publisher
    ET.SubElement(dataset, "pubDate").text = date.today().isoformat()
    ET.SubElement(dataset, "language").text = ds.language
    ET.SubElement(ET.SubElement(dataset, "abstract"), "para").text = ds.description
    ET.SubElement(
        ET.SubElement(dataset, "intellectualRights"), "para"
    ).text = f"This work is licensed under {ds.license_uri()}"
    contact = ET.SubElement(dataset, "contact")
    if ds.contact_name:
        ET.SubElement(ET.SubElement(contact, "individualName"), "surName").text = ds.contact_name
    ET.SubElement(contact, "organizationName").text = ds.publisher
    if ds.contact_email:
        ET.SubElement(contact, "electronicMailAddress").text = ds.contact_email
    step = ET.SubElement(ET.SubElement(dataset, "methods"), "methodStep")
    ET.SubElement(ET.SubElement(step, "description"), "para").text = (
        f"Individuals identified by machine with ecomarine {__version__}, "
        f"model(s): {', '.join(models) or 'unknown'}. Photos were screened by a "
        "cetacean gate, embedded by the model and matched against a catalogue of known "
        "individuals; records are unverified machine observations (see each record's "
        "identificationRemarks for scores and candidates)."
    )
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def write_dwca(
    path: str | os.PathLike[str],
    predictions: Iterable[Prediction | SightingPrediction],
    metadata: DatasetMetadata | None = None,
    **kwargs: Any,
) -> Path:
    """Write a Darwin Core Archive (zip) atomically; return its path.

    Args:
        path: The ``.zip`` to write.
        predictions: Predictions to export (rejected ones are left out by default).
        metadata: Dataset metadata (``eml.xml``) and record defaults; its licence is
            required.
        **kwargs: Passed to :func:`to_occurrences` (``defaults``, ``per_image``,
            ``media_base_url``, ...).

    Raises:
        DataError: See :func:`to_occurrences`; nothing is written then.
    """
    preds = list(predictions)
    ds = metadata or DatasetMetadata()
    built = _built(preds, ds, kwargs)
    occurrences = [occ.record for occ in built]
    media = _multimedia(built)
    columns = _columns(occurrences)
    package = hashlib.sha256("".join(o["occurrenceID"] for o in occurrences).encode()).hexdigest()[
        :16
    ]
    models = sorted(
        {
            p.model_id + (f" (weights licensed {p.model_license})" if p.model_license else "")
            for p in preds
            if p.model_id
        }
    )
    target = Path(path)
    with (
        atomic_write(target) as fh,
        zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf,
    ):
        zf.writestr("meta.xml", _meta_xml(columns))
        zf.writestr("eml.xml", _eml_xml(ds, f"ecomarine-{package}", models))
        zf.writestr("occurrence.txt", _tsv(columns, occurrences))
        zf.writestr("multimedia.txt", _tsv(["coreid", *MULTIMEDIA_TERMS], media))
    return target
