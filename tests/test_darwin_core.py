from __future__ import annotations

import zipfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from ecomarine import DataError, Match, Prediction
from ecomarine.darwin_core import DatasetMetadata, to_occurrences, write_dwca
from ecomarine.exif import read_exif_event
from ecomarine.species import SPECIES, lookup_species

HAPPYWHALE_LABELS = [
    "melon_headed_whale",
    "humpback_whale",
    "false_killer_whale",
    "bottlenose_dolphin",
    "beluga",
    "minke_whale",
    "fin_whale",
    "blue_whale",
    "gray_whale",
    "southern_right_whale",
    "common_dolphin",
    "kiler_whale",
    "pilot_whale",
    "dusky_dolphin",
    "killer_whale",
    "long_finned_pilot_whale",
    "sei_whale",
    "spinner_dolphin",
    "bottlenose_dolpin",
    "cuviers_beaked_whale",
    "spotted_dolphin",
    "globis",
    "brydes_whale",
    "commersons_dolphin",
    "white_sided_dolphin",
    "short_finned_pilot_whale",
    "rough_toothed_dolphin",
    "pantropic_spotted_dolphin",
    "fraser_dolphin",
    "frasiers_dolphin",
]


def _rational(x: float) -> TiffImagePlugin.IFDRational:
    f = Fraction(x).limit_denominator(10_000)
    return TiffImagePlugin.IFDRational(f.numerator, f.denominator)


def _photo_with_exif(path: Path, *, lat: float, lon: float, when: str, offset: str) -> Path:
    img = Image.fromarray(np.full((32, 48, 3), 90, np.uint8))
    exif = Image.Exif()
    exif_ifd = exif.get_ifd(0x8769)
    exif_ifd[0x9003] = when
    exif_ifd[0x9011] = offset
    gps = exif.get_ifd(0x8825)

    def dms(v: float) -> tuple[TiffImagePlugin.IFDRational, ...]:
        d = int(v)
        m = int((v - d) * 60)
        s = (v - d - m / 60) * 3600
        return (_rational(d), _rational(m), _rational(round(s, 2)))

    gps[1], gps[2] = ("N" if lat >= 0 else "S"), dms(abs(lat))
    gps[3], gps[4] = ("E" if lon >= 0 else "W"), dms(abs(lon))
    gps[18] = "WGS-84"
    img.save(path, exif=exif.tobytes())
    return path


def test_exif_date_and_gps(tmp_path: Path) -> None:
    photo = _photo_with_exif(
        tmp_path / "a.jpg", lat=61.1234, lon=-150.5678, when="2019:08:05 16:49:13", offset="-08:00"
    )
    got = read_exif_event(photo)
    assert got["eventDate"] == "2019-08-05T16:49:13-08:00"
    assert float(got["decimalLatitude"]) == pytest.approx(61.1234, abs=1e-4)
    assert float(got["decimalLongitude"]) == pytest.approx(-150.5678, abs=1e-4)
    assert got["geodeticDatum"] == "EPSG:4326"
    plain = tmp_path / "plain.jpg"
    Image.new("RGB", (8, 8)).save(plain)
    assert read_exif_event(plain) == {}
    assert read_exif_event(tmp_path / "nope.jpg") == {}


def test_species_table_covers_happywhale() -> None:
    for label in HAPPYWHALE_LABELS:
        taxon = lookup_species(label)
        assert taxon is not None, label
        assert taxon.scientific_name
    assert lookup_species("kiler_whale") == lookup_species("Killer Whale")
    assert lookup_species("globis").rank == "genus"  # type: ignore[union-attr]
    assert lookup_species("unicorn") is None
    assert set(HAPPYWHALE_LABELS) <= set(SPECIES)


LICENSED = DatasetMetadata(license="CC-BY-4.0")


def _preds(tmp_path: Path) -> list[Prediction]:
    photo = _photo_with_exif(
        tmp_path / "w1.jpg", lat=-33.5, lon=151.25, when="2021:01:02 03:04:05", offset="+10:00"
    )
    other = tmp_path / "w2.png"
    Image.new("RGB", (8, 8)).save(other)
    return [
        Prediction(
            str(photo),
            True,
            0.97,
            species="humpback_whale",
            species_score=1.0,
            individual_id="HW-7",
            candidates=(Match("HW-7", 0.81, "humpback_whale"), Match("HW-2", 0.52)),
            new_individual_threshold=0.5,
            sha256="ab" * 32,
            model_id="embedded",
            candidate_source="gallery",
        ),
        Prediction(
            str(other),
            True,
            0.91,
            species="kiler_whale",
            is_new_individual=True,
            candidates=(Match("KW-1", 0.31),),
            new_individual_threshold=0.5,
            sha256="cd" * 32,
            model_id="embedded",
            candidate_source="gallery",
        ),
        Prediction(
            str(tmp_path / "shark.jpg"),
            False,
            0.02,
            rejection_reason="not_cetacean",
            sha256="ef" * 32,
            model_id="embedded",
        ),
    ]


def test_to_occurrences(tmp_path: Path) -> None:
    preds = _preds(tmp_path)
    occ = to_occurrences(
        preds,
        dataset=LICENSED,
        defaults={"recordedBy": "A. Observer"},
        per_image={preds[1].source or "": {"eventDate": "2020-05-01"}},
    )
    assert len(occ) == 2  # the rejected photo is left out
    a, b = occ
    assert a["basisOfRecord"] == "MachineObservation"
    assert a["scientificName"] == "Megaptera novaeangliae"
    assert a["organismID"] == "HW-7"
    assert a["eventDate"] == "2021-01-02T03:04:05+10:00"
    assert a["decimalLatitude"] == "-33.500000"
    assert a["recordedBy"] == "A. Observer"
    assert a["identificationVerificationStatus"] == "unverified"
    assert "HW-2 0.520" in a["identificationRemarks"]
    assert a["identifiedBy"].startswith("ecomarine ")
    assert b["organismID"] == ""
    assert b["scientificName"] == "Orcinus orca"
    assert b["eventDate"] == "2020-05-01"
    # Stable ids: a re-export gives the same occurrenceID.
    assert [o["occurrenceID"] for o in to_occurrences(preds, dataset=LICENSED)] == [
        a["occurrenceID"],
        b["occurrenceID"],
    ]
    assert len(to_occurrences(preds, dataset=LICENSED, include_rejected=True)) == 3
    with pytest.raises(DataError, match="not a Darwin Core term"):
        to_occurrences(preds, dataset=LICENSED, defaults={"colour": "blue"})


def test_archive_reads_back_with_python_dwca_reader(tmp_path: Path) -> None:
    dwca_reader = pytest.importorskip("dwca.read")
    preds = _preds(tmp_path)
    nasty = "line one\nline two\twith a tab, «Ω» and ĉ"
    out = write_dwca(
        tmp_path / "out.zip",
        preds,
        DatasetMetadata(
            title="Test survey", publisher="Ocean Lab", recorded_by=nasty, license="CC-BY-4.0"
        ),
    )
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["eml.xml", "meta.xml", "multimedia.txt", "occurrence.txt"]
        meta = zf.read("meta.xml").decode()
    assert "http://rs.tdwg.org/dwc/terms/Occurrence" in meta
    assert "http://rs.gbif.org/terms/1.0/Multimedia" in meta
    with dwca_reader.DwCAReader(str(out)) as dwca:
        assert dwca.descriptor.core.type == "http://rs.tdwg.org/dwc/terms/Occurrence"
        rows = list(dwca)
        assert len(rows) == 2
        first = rows[0]
        assert first.data["http://rs.tdwg.org/dwc/terms/scientificName"] == "Megaptera novaeangliae"
        assert first.data["http://rs.tdwg.org/dwc/terms/recordedBy"] == nasty
        assert first.data["http://rs.tdwg.org/dwc/terms/basisOfRecord"] == "MachineObservation"
        assert first.data["http://purl.org/dc/terms/license"].startswith(
            "http://creativecommons.org"
        )
        assert first.id == first.data["http://rs.tdwg.org/dwc/terms/occurrenceID"]
        media = first.extensions
        assert len(media) == 1
        assert media[0].rowtype == "http://rs.gbif.org/terms/1.0/Multimedia"
        assert media[0].data["http://purl.org/dc/terms/identifier"] == preds[0].source
        assert media[0].data["http://purl.org/dc/terms/format"] == "image/jpeg"
        assert media[0].core_id == first.id
        assert "Test survey" in dwca.metadata.find("dataset").find("title").text


def test_write_is_atomic_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.zip"
    target.write_bytes(b"previous archive")

    class Boom(Prediction):
        pass

    with pytest.raises(DataError):
        write_dwca(target, _preds(tmp_path), LICENSED, defaults={"notATerm": "x"})
    assert target.read_bytes() == b"previous archive"
