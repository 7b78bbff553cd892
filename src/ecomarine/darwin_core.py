"""Darwin Core occurrence records and GBIF-ready Darwin Core Archives.

One ``Occurrence`` per accepted prediction (``basisOfRecord = MachineObservation``),
with the individual as ``organismID``, a stable ``occurrenceID`` (image content hash +
model, so re-exports do not duplicate records), taxon terms from :mod:`ecomarine.species`,
date and coordinates from EXIF unless the caller supplies them, and a Simple Multimedia
extension row linking each image. Archives are tab-separated UTF-8 with quoted fields
(so tabs and newlines inside values survive), and are written atomically.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from ._atomic import atomic_write
from ._files import safe_is_file
from ._text import spreadsheet_safe
from ._version import __version__
from .errors import DataError
from .exif import read_exif_event
from .species import lookup_species
from .types import Prediction

__all__ = [
    "MULTIMEDIA_TERMS",
    "OCCURRENCE_TERMS",
    "USER_TERMS",
    "DatasetMetadata",
    "to_multimedia",
    "to_occurrences",
    "write_dwca",
]

DWC = "http://rs.tdwg.org/dwc/terms/"
DC = "http://purl.org/dc/terms/"
OCCURRENCE_ROW = DWC + "Occurrence"
MULTIMEDIA_ROW = "http://rs.gbif.org/terms/1.0/Multimedia"

#: Terms a caller may set (defaults, per-image values); the rest ecomarine fills in.
USER_TERMS: tuple[str, ...] = (
    "institutionCode",
    "collectionCode",
    "datasetName",
    "license",
    "rightsHolder",
    "recordedBy",
    "eventDate",
    "decimalLatitude",
    "decimalLongitude",
    "geodeticDatum",
)
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
)
#: Core columns, in order, with their term URIs.
OCCURRENCE_TERMS: dict[str, str] = {
    name: (DC if name in ("license", "rightsHolder") else DWC) + name
    for name in ("occurrenceID", "basisOfRecord", *USER_TERMS, *_COMPUTED_TERMS)
}
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


@dataclass(frozen=True)
class DatasetMetadata:
    """Dataset-level metadata for ``eml.xml`` and default record values.

    Attributes:
        title: Dataset title. publisher: Publishing organisation. license: A licence URI
        or name (GBIF accepts CC0, CC-BY 4.0, CC-BY-NC 4.0). description: Abstract.
        contact_name / contact_email: Resource contact. recorded_by: Default recordedBy.
        institution_code: Default institutionCode. language: ISO 639-1 code.
    """

    title: str = "Cetacean photo-identifications made with ecomarine"
    publisher: str = "unknown"
    license: str = "http://creativecommons.org/licenses/by/4.0/legalcode"
    description: str = "Machine identifications of individual cetaceans from photographs."
    contact_name: str | None = None
    contact_email: str | None = None
    recorded_by: str | None = None
    institution_code: str | None = None
    language: str = "en"
    extra_defaults: dict[str, str] = field(default_factory=dict)


def _occurrence_id(pred: Prediction) -> str:
    content = pred.sha256 or hashlib.sha256((pred.source or "").encode()).hexdigest()
    model = pred.model_id or "unknown-model"
    return f"urn:ecomarine:{content[:32]}:{model}"


def _remarks(pred: Prediction) -> str:
    parts = []
    if pred.gate_score is not None:
        parts.append(f"gate score {pred.gate_score:.3f}")
    if pred.candidates:
        best = pred.candidates[0]
        parts.append(f"best match {best.individual_id} ({best.score:.3f})")
        parts.append(
            "candidates: " + ", ".join(f"{m.individual_id} {m.score:.3f}" for m in pred.candidates)
        )
    if pred.new_individual_threshold is not None:
        parts.append(f"new-individual threshold {pred.new_individual_threshold:.3f}")
    if pred.rejection_reason:
        parts.append(f"rejected: {pred.rejection_reason}")
    return "; ".join(parts)


def to_occurrences(
    predictions: Iterable[Prediction],
    *,
    dataset: DatasetMetadata | None = None,
    defaults: Mapping[str, str] | None = None,
    per_image: Mapping[str, Mapping[str, str]] | None = None,
    include_rejected: bool = False,
    read_exif: bool = True,
) -> list[dict[str, str]]:
    """Darwin Core Occurrence records (term name -> value) for predictions.

    Args:
        predictions: From :meth:`Pipeline.predict_many` or a results file.
        dataset: Supplies ``recordedBy``, ``institutionCode`` and ``license`` defaults.
        defaults: Values for user terms (``recordedBy``, ``eventDate``, ...) for every record.
        per_image: Values per ``source``; these win over EXIF and ``defaults``.
        include_rejected: Keep predictions the gate rejected (off by default).
        read_exif: Fill ``eventDate`` and coordinates from the photo's EXIF.

    Raises:
        DataError: For a ``defaults`` key that is not a Darwin Core term this module writes.
    """
    ds = dataset or DatasetMetadata()
    base: dict[str, str] = {"license": ds.license, **ds.extra_defaults}
    if ds.recorded_by:
        base["recordedBy"] = ds.recorded_by
    if ds.institution_code:
        base["institutionCode"] = ds.institution_code
    for key in list(defaults or {}) + [k for v in (per_image or {}).values() for k in v]:
        if key not in USER_TERMS:
            raise DataError(f"{key!r} is not a Darwin Core term you can set: {list(USER_TERMS)}")
    base.update(defaults or {})
    today = date.today().isoformat()
    out = []
    for pred in predictions:
        if pred.rejection_reason and not include_rejected:
            continue
        rec = dict.fromkeys(OCCURRENCE_TERMS, "")
        if read_exif and pred.source and safe_is_file(pred.source):
            rec.update(read_exif_event(pred.source))
        rec.update({k: v for k, v in base.items() if v is not None})
        rec.update((per_image or {}).get(pred.source or "", {}))
        taxon = lookup_species(pred.species)
        if taxon is not None:
            rec.update(taxon.terms())
        elif pred.species:
            rec["vernacularName"] = pred.species
        rec.update(
            occurrenceID=_occurrence_id(pred),
            basisOfRecord="MachineObservation",
            organismID=pred.individual_id or "" if not pred.is_new_individual else "",
            occurrenceRemarks="new individual (not in the catalogue)"
            if pred.is_new_individual
            else rec["occurrenceRemarks"],
            identifiedBy=f"ecomarine {__version__} ({pred.model_id or 'unknown model'})",
            dateIdentified=today,
            identificationVerificationStatus="unverified",
            identificationRemarks=_remarks(pred),
            associatedMedia=pred.source or "",
        )
        out.append(rec)
    return out


def to_multimedia(
    predictions: Iterable[Prediction], occurrences: Sequence[Mapping[str, str]]
) -> list[dict[str, str]]:
    """One Simple Multimedia row per occurrence, linking its image (``coreid`` first)."""
    by_id = {o["occurrenceID"]: o for o in occurrences}
    rows = []
    for pred in predictions:
        occ = by_id.get(_occurrence_id(pred))
        if occ is None or not pred.source:
            continue
        suffix = Path(pred.source).suffix.lower().lstrip(".")
        rows.append(
            {
                "coreid": occ["occurrenceID"],
                "type": "StillImage",
                "format": {
                    "jpg": "image/jpeg",
                    "jpeg": "image/jpeg",
                    "png": "image/png",
                    "webp": "image/webp",
                    "tif": "image/tiff",
                    "tiff": "image/tiff",
                }.get(suffix, ""),
                "identifier": pred.source,
                "title": Path(pred.source).name,
                "created": occ.get("eventDate", ""),
                "creator": occ.get("recordedBy", ""),
                "license": occ.get("license", ""),
                "rightsHolder": occ.get("rightsHolder", ""),
            }
        )
    return rows


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


def _meta_xml() -> bytes:
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
    for i, uri in enumerate(OCCURRENCE_TERMS.values()):
        ET.SubElement(core, ns + "field", {"index": str(i), "term": uri})
    ext = ET.SubElement(archive, ns + "extension", {**attrs, "rowType": MULTIMEDIA_ROW})
    ET.SubElement(ET.SubElement(ext, ns + "files"), ns + "location").text = "multimedia.txt"
    ET.SubElement(ext, ns + "coreid", {"index": "0"})
    for i, uri in enumerate(MULTIMEDIA_TERMS.values(), start=1):
        ET.SubElement(ext, ns + "field", {"index": str(i), "term": uri})
    return bytes(ET.tostring(archive, encoding="utf-8", xml_declaration=True))


def _eml_xml(ds: DatasetMetadata, package_id: str) -> bytes:
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
    ET.SubElement(ET.SubElement(dataset, "intellectualRights"), "para").text = ds.license
    contact = ET.SubElement(dataset, "contact")
    if ds.contact_name:
        ET.SubElement(ET.SubElement(contact, "individualName"), "surName").text = ds.contact_name
    ET.SubElement(contact, "organizationName").text = ds.publisher
    if ds.contact_email:
        ET.SubElement(contact, "electronicMailAddress").text = ds.contact_email
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def write_dwca(
    path: str | os.PathLike[str],
    predictions: Iterable[Prediction],
    metadata: DatasetMetadata | None = None,
    **kwargs: Any,
) -> Path:
    """Write a Darwin Core Archive (zip) atomically; return its path.

    Args:
        path: The ``.zip`` to write.
        predictions: Predictions to export (rejected ones are left out by default).
        metadata: Dataset metadata (``eml.xml``) and record defaults.
        **kwargs: Passed to :func:`to_occurrences` (``defaults``, ``per_image``, ...).
    """
    preds = list(predictions)
    ds = metadata or DatasetMetadata()
    occurrences = to_occurrences(preds, dataset=ds, **kwargs)
    media = to_multimedia(preds, occurrences)
    package = hashlib.sha256("".join(o["occurrenceID"] for o in occurrences).encode()).hexdigest()[
        :16
    ]
    target = Path(path)
    with (
        atomic_write(target) as fh,
        zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf,
    ):
        zf.writestr("meta.xml", _meta_xml())
        zf.writestr("eml.xml", _eml_xml(ds, f"ecomarine-{package}"))
        zf.writestr("occurrence.txt", _tsv(list(OCCURRENCE_TERMS), occurrences))
        zf.writestr("multimedia.txt", _tsv(["coreid", *MULTIMEDIA_TERMS], media))
    return target
