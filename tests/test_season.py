"""A season's work without losing data (issue #19): one test per defect a new user met.

Each test reproduces what went wrong on the previous release (0.1.0.dev0 at 170e6b4) and
holds the fix: duplicate photos, streamed and resumable results, head candidates apart
from catalogue matches, species only with evidence, scores in every output, photos named
by their path under the input folder, catalogue commands, column mapping, progress,
``--threshold``, and Darwin Core that GBIF can keep.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ecomarine import Gallery, Match, Pipeline, Prediction
from ecomarine.cli import main
from ecomarine.darwin_core import (
    DatasetMetadata,
    license_uri,
    media_url,
    read_sidecar,
    to_occurrences,
    write_dwca,
)
from ecomarine.errors import DataError, GalleryError
from ecomarine.results import ResultsWriter, completed_sources, read_results
from ecomarine.species_vote import vote_species


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str) -> str:
    assert err.startswith("error: "), err
    assert err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def gallery_dir(tmp_path_factory: pytest.TempPathFactory, examples_dir: Path) -> Path:
    """The 12-beluga example catalogue (one species), built once through the CLI."""
    out = tmp_path_factory.mktemp("g") / "gal"
    b = examples_dir / "belugas"
    assert main(["gallery", "build", "--csv", str(b / "gallery.csv"), "--images", str(b),
                 "--out", str(out)]) == 0  # fmt: skip
    return out


@pytest.fixture(scope="module")
def other_cetaceans(gate_dir: Path) -> list[Path]:
    """Two dolphins and a blue whale (Happywhale; read in place)."""
    with (gate_dir / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    picked = [r for r in rows if r["group"] == "happywhale:common_dolphin"][:2]
    picked += [r for r in rows if r["group"] == "happywhale:blue_whale"][:1]
    return [gate_dir / r["relpath"] for r in picked]


# --- data loss and silent surprises ---------------------------------------------------


def test_adding_the_same_photos_twice_skips_them(
    tmp_path: Path, examples_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b = examples_dir / "belugas"
    gal = tmp_path / "g"
    csv_args = ["--csv", str(b / "gallery.csv"), "--images", str(b)]
    assert main(["gallery", "build", *csv_args, "--out", str(gal)]) == 0
    capsys.readouterr()
    code, out, err = run(["gallery", "add", str(gal), *csv_args], capsys)
    assert code == 0, err
    assert "added 0 photos; gallery now 36 photos" in out
    assert "36 duplicate photos skipped" in out
    code, out, err = run(["gallery", "add", str(gal), *csv_args, "--duplicates", "error"], capsys)
    assert code == 2
    assert "already in the gallery" in one_line_error(err)
    assert Gallery.load(gal).__len__() == 36  # nothing half-added
    code, out, err = run(["gallery", "add", str(gal), *csv_args, "--duplicates", "keep"], capsys)
    assert code == 0, err
    assert "gallery now 72 photos" in out
    # A renamed copy of a catalogue photo is the same photo.
    copy = tmp_path / "renamed.jpg"
    shutil.copy(next((b / "gallery").glob("*.jpg")), copy)
    pipe = Pipeline.from_pretrained("embedded", gate=False, gallery=gal)
    assert pipe.enroll([copy], ["someone"]) == []
    assert pipe.enroll([copy], ["someone"], duplicates="keep") != []


def test_every_argument_is_checked_before_a_model_loads(
    tmp_path: Path, examples_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = str(next((examples_dir / "belugas" / "queries").glob("*.jpg")))
    empty_model = tmp_path / "model"
    empty_model.mkdir()
    cases = [
        (["--threshold", "nan"], "finite"),
        (["--threshold", "2"], "--threshold"),
        (["--model", str(tmp_path / "nothere")], "not found"),
        (["--model", str(empty_model)], "not a model folder"),
        (["--dwca", str(tmp_path / "a.zip")], "licence"),
        (["--dwca", str(tmp_path / "a.zip"), "--license", "all rights reserved"], "GBIF"),
        (["--resume"], "--output"),
        (
            [
                "--dwc-default",
                "colour=blue",
                "--dwca",
                str(tmp_path / "a.zip"),
                "--license",
                "CC0-1.0",
            ],
            "not a Darwin Core term",
        ),
    ]
    for extra, message in cases:
        code, _out, err = run(["identify", photo, *extra], capsys)
        assert code == 2, (extra, err)
        assert message in one_line_error(err), (extra, err)
    assert not (tmp_path / "a.zip").exists()


def test_results_are_on_disk_as_they_are_made(tmp_path: Path, examples_dir: Path) -> None:
    photos = sorted((examples_dir / "belugas" / "queries").glob("*.jpg"))[:4]
    pipe = Pipeline.from_pretrained("embedded", device="cpu")
    for suffix in (".jsonl", ".csv"):
        out = tmp_path / f"r{suffix}"
        with ResultsWriter(out) as writer:
            for n, pred in enumerate(pipe.predict_many(photos, batch_size=1), 1):
                writer.write(pred)
                # Each record is complete in the file before the next photo is done.
                assert len(read_results(out)) == n
        assert [p.source for p in read_results(out)] == [str(p) for p in photos]


def test_resume_drops_a_torn_last_record_and_skips_what_is_done(
    tmp_path: Path, examples_dir: Path, gallery_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    queries = examples_dir / "belugas" / "queries"
    photos = sorted(queries.glob("*.jpg"))
    out = tmp_path / "r.jsonl"
    args = ["identify", str(queries), "--gallery", str(gallery_dir), "--output", str(out)]
    assert main(args) == 0
    full = out.read_text().splitlines()
    # A crash after 5 photos, in the middle of writing the sixth.
    out.write_text("\n".join(full[:5]) + "\n" + full[5][:40])
    assert len(completed_sources(out)) == 5
    assert out.read_text().endswith("\n")  # the torn record is gone
    out.write_text(out.read_text() + full[5][:40])
    capsys.readouterr()
    code, stdout, err = run([*args, "--resume"], capsys)
    assert code == 0, err
    assert f"5 of {len(photos)} photos done" in stdout
    again = out.read_text().splitlines()
    assert len(again) == len(photos)
    assert sorted(json.loads(x)["source"] for x in again) == sorted(str(p) for p in photos)
    code, _out, err = run(args, capsys)  # without --resume the results are not replaced
    assert code == 2
    assert "--resume" in one_line_error(err)


# --- honest answers ---------------------------------------------------------------------


def test_head_candidates_are_not_identifications(
    other_cetaceans: list[Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "r.jsonl"
    code, stdout, err = run(
        ["identify", *map(str, other_cetaceans), "--gate", "none", "--output", str(out)], capsys
    )
    assert code == 0, err
    assert "0 identified" in stdout
    assert "not matched to any catalogue" in stdout
    assert "(head)" in stdout
    preds = read_results(out)
    assert all(p.candidate_source == "head" for p in preds)
    assert all(p.individual_id is None for p in preds)
    assert all(p.candidates for p in preds)  # the hints are kept, marked as such
    occ = to_occurrences(preds, dataset=DatasetMetadata(license="CC0-1.0"), read_exif=False)
    assert all(o["organismID"] == "" for o in occ)


def test_one_species_catalogue_names_no_species_for_unmatched_photos(
    gallery_dir: Path, other_cetaceans: list[Path], examples_dir: Path
) -> None:
    pipe = Pipeline.from_pretrained("embedded", gallery=gallery_dir, gate=False)
    preds = list(pipe.predict_many(other_cetaceans))
    assert all(p.is_new_individual for p in preds)
    assert all(p.candidates[0].species == "beluga" for p in preds)  # the vote is all beluga
    assert [p.species for p in preds] == [None, None, None]  # ... and says nothing
    occ = to_occurrences(preds, dataset=DatasetMetadata(license="CC0-1.0"), read_exif=False)
    assert {o["scientificName"] for o in occ} == {"Cetacea"}
    assert {o["taxonRank"] for o in occ} == {"infraorder"}
    # A known match carries its individual's species.
    photo = next((examples_dir / "belugas" / "gallery").glob("*.jpg"))
    known = pipe.predict(photo)
    assert not known.is_new_individual
    assert known.species == "beluga"


def test_species_vote_needs_evidence() -> None:
    cands = [Match("a", 0.6, "orca"), Match("b", 0.5, "orca"), Match("c", 0.1, "beluga")]
    assert vote_species(cands, matched=None, catalogue_species=2)[0] == "orca"
    assert vote_species(cands, matched=None, catalogue_species=1) == (None, None)
    assert vote_species(cands, matched="c", catalogue_species=1)[0] == "beluga"
    split = [Match("a", 0.5, "orca"), Match("c", 0.5, "beluga")]
    assert vote_species(split, matched=None, catalogue_species=2) == (None, None)
    assert vote_species([], matched=None, catalogue_species=3) == (None, None)
    # In a gallery: several species, a clear vote.
    g = Gallery()
    g.add(
        np.eye(4, dtype=np.float32), ["o1", "o2", "b1", "b2"], ["orca", "orca", "beluga", "beluga"]
    )
    q = np.array([[0.6, 0.6, 0.05, 0.0]], np.float32)
    (ans,) = g.identify(q, top_k=4, threshold=0.99)
    assert ans.is_new_individual
    assert ans.species == "orca"


def test_table_and_csv_keep_the_best_guess_and_scores(
    tmp_path: Path,
    examples_dir: Path,
    gallery_dir: Path,
    other_cetaceans: list[Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "r.csv"
    code, stdout, err = run(
        [
            "identify",
            str(other_cetaceans[0]),
            "--gallery",
            str(gallery_dir),
            "--output",
            str(out),
            "--gate",
            "none",
        ],
        capsys,
    )
    assert code == 0, err
    (row,) = [line for line in stdout.splitlines() if "NEW individual" in line]
    (pred,) = read_results(out)
    best = pred.candidates[0]
    assert best.individual_id in row
    assert f"{best.score:.3f}" in row
    with out.open() as fh:
        (record,) = list(csv.DictReader(fh))
    assert record["best_match"] == best.individual_id
    assert [c["score"] for c in json.loads(record["candidates"])] == [
        m.score for m in pred.candidates
    ]
    assert "open-set policy: new individual when the best match scores under" in stdout


def test_photos_are_named_by_their_path_under_the_input_folder(
    tmp_path: Path, examples_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    survey = tmp_path / "survey"
    photos = sorted((examples_dir / "belugas" / "queries").glob("*.jpg"))[:2]
    for day, photo in zip(("day1", "day2"), photos, strict=True):
        (survey / day).mkdir(parents=True)
        shutil.copy(photo, survey / day / "IMG_0001.jpg")
    code, stdout, err = run(["identify", str(survey), "--gate", "none"], capsys)
    assert code == 0, err
    assert "day1/IMG_0001.jpg" in stdout
    assert "day2/IMG_0001.jpg" in stdout


def test_threshold_option_decides_and_is_reported(
    examples_dir: Path, gallery_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    queries = str(examples_dir / "belugas" / "queries")
    base = ["identify", queries, "--gallery", str(gallery_dir), "--gate", "none"]
    code, stdout, err = run([*base, "--threshold", "-1"], capsys)
    assert code == 0, err
    assert "12 identified, 0 new" in stdout
    assert "under -1.000 (from --threshold)" in stdout
    code, stdout, err = run([*base, "--threshold", "1"], capsys)
    assert "0 identified, 12 new" in stdout
    assert Gallery.load(gallery_dir).new_individual_threshold is None  # never saved


# --- the catalogue as a researcher keeps it ---------------------------------------------


def test_gallery_list_show_rename_merge_and_remove_by_file_name(
    tmp_path: Path, examples_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b = examples_dir / "belugas"
    gal = tmp_path / "g"
    assert main(["gallery", "build", "--csv", str(b / "gallery.csv"), "--images", str(b),
                 "--out", str(gal)]) == 0  # fmt: skip
    capsys.readouterr()
    code, out, err = run(["gallery", "list", str(gal)], capsys)
    assert code == 0, err
    assert "whale003" in out
    assert "2017-08-07" in out
    assert "12 individuals, 36 photos" in out
    code, out, err = run(["gallery", "show", str(gal), "whale003"], capsys)
    assert code == 0, err
    assert "gallery/train0003.jpg" in out
    code, out, err = run(["gallery", "show", str(gal), "nobody"], capsys)
    assert code == 2
    code, out, err = run(["gallery", "rename", str(gal), "whale003", "W3"], capsys)
    assert code == 0, err
    code, out, err = run(["gallery", "rename", str(gal), "W3", "whale026"], capsys)
    assert code == 2
    assert "merge" in one_line_error(err)
    code, out, err = run(
        ["gallery", "merge-individuals", str(gal), "W3", "whale026", "--into", "W3"], capsys
    )
    assert code == 0, err
    assert len(Gallery.load(gal).individuals()) == 11
    code, out, err = run(["gallery", "remove", str(gal), "--source", "train0003.jpg"], capsys)
    assert code == 0, err
    assert "removed 1 photos; 35 remain" in out
    code, out, err = run(["gallery", "remove", str(gal), "--source", "nothere.jpg"], capsys)
    assert code == 2


def test_merging_two_catalogues_reports_conflicts(
    tmp_path: Path, examples_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b = examples_dir / "belugas"
    with (b / "gallery.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    for path, part in ((first, rows[:20]), (second, rows[16:])):
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, list(rows[0]))
            w.writeheader()
            w.writerows(part)
    # The second team calls one whale by another name.
    renamed = rows[16]["individual_id"]
    second.write_text(second.read_text().replace(f",{renamed},", ",their-name,", 1))
    for csv_path, out in ((first, "A"), (second, "B")):
        assert main(["gallery", "build", "--csv", str(csv_path), "--images", str(b),
                     "--out", str(tmp_path / out)]) == 0  # fmt: skip
    capsys.readouterr()
    merge = ["gallery", "merge", str(tmp_path / "A"), str(tmp_path / "B")]
    code, out, err = run([*merge, "--out", str(tmp_path / "C")], capsys)
    assert code == 0, err
    assert "skipped 4 photos present in both" in out
    assert f"is {renamed} in" in out
    assert "their-name" in out
    merged = Gallery.load(tmp_path / "C")
    assert len(merged) == 36
    assert len({r["image_id"] for r in merged.records()}) == 36
    code, out, err = run([*merge, "--out", str(tmp_path / "C")], capsys)
    assert code == 2  # an existing output is never replaced


def test_merging_galleries_of_different_models_is_refused() -> None:
    a, b = Gallery(fingerprint="one"), Gallery(fingerprint="two")
    a.add(np.eye(2, dtype=np.float32), ["x", "y"])
    b.add(np.eye(2, dtype=np.float32), ["z", "w"])
    with pytest.raises(GalleryError, match="different models"):
        a.merge_from(b)


def test_catalogue_columns_can_be_mapped(
    tmp_path: Path, examples_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b = examples_dir / "belugas"
    theirs = tmp_path / "theirs.csv"
    with (b / "gallery.csv").open() as src, theirs.open("w", newline="") as dst:
        reader = csv.DictReader(src)
        w = csv.writer(dst)
        w.writerow(["path", "whale_id", "sighting", "taxon"])
        for r in reader:
            w.writerow([r["image"], r["individual_id"], r["encounter"], r["species"]])
    base = ["gallery", "build", "--csv", str(theirs), "--images", str(b)]
    code, _out, err = run([*base, "--out", str(tmp_path / "g0")], capsys)
    assert code == 2
    assert "--id-column" in one_line_error(err)
    code, out, err = run(
        [
            *base,
            "--out",
            str(tmp_path / "g"),
            "--id-column",
            "whale_id",
            "--image-column",
            "path",
            "--column",
            "encounter=sighting",
            "--column",
            "species=taxon",
        ],
        capsys,
    )
    assert code == 0, err
    assert "36 photos of 12 individuals" in out
    g = Gallery.load(tmp_path / "g")
    assert {r["species"] for r in g.records()} == {"beluga"}
    assert all("encounter" in r["metadata"] for r in g.records())
    code, _out, err = run([*base, "--out", str(tmp_path / "g2"), "--column", "colour=x"], capsys)
    assert code == 2
    assert "unknown catalogue field" in one_line_error(err)


def test_long_commands_show_progress_on_a_terminal_only(
    tmp_path: Path,
    examples_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    b = examples_dir / "belugas"
    args = ["gallery", "build", "--csv", str(b / "gallery.csv"), "--images", str(b)]
    assert main([*args, "--out", str(tmp_path / "quiet")]) == 0
    assert "embedding" not in capsys.readouterr().err  # not a terminal: quiet
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main([*args, "--out", str(tmp_path / "tty")]) == 0
    err = capsys.readouterr().err
    assert "embedding" in err
    assert "100%" in err


# --- Darwin Core that GBIF can keep ---------------------------------------------------


def _preds(tmp_path: Path, examples_dir: Path) -> list[Prediction]:
    survey = tmp_path / "survey" / "day1"
    survey.mkdir(parents=True)
    photos = []
    for photo in sorted((examples_dir / "belugas" / "queries").glob("*.jpg"))[:3]:
        photos.append(survey / photo.name)
        shutil.copy(photo, photos[-1])
    return list(Pipeline.from_pretrained("embedded", gate=False).predict_many(photos))


def test_occurrence_ids_are_stable_across_models(tmp_path: Path, examples_dir: Path) -> None:
    preds = _preds(tmp_path, examples_dir)
    other = [Prediction.from_dict({**p.to_dict(), "model_id": "a-better-model"}) for p in preds]
    ds = DatasetMetadata(license="CC-BY-4.0", dataset_id="cook-inlet")
    a = to_occurrences(preds, dataset=ds)
    b = to_occurrences(other, dataset=ds)
    assert [o["occurrenceID"] for o in a] == [o["occurrenceID"] for o in b]
    assert all(o["occurrenceID"].startswith("urn:ecomarine:cook-inlet:") for o in a)
    assert "a-better-model" in b[0]["identifiedBy"]
    assert "a-better-model" in b[0]["identificationRemarks"]
    archive = write_dwca(tmp_path / "a.zip", other, ds)
    with zipfile.ZipFile(archive) as zf:
        assert "a-better-model" in zf.read("eml.xml").decode()


def test_licence_is_an_explicit_choice(tmp_path: Path, examples_dir: Path) -> None:
    preds = _preds(tmp_path, examples_dir)
    with pytest.raises(DataError, match="choose a licence"):
        write_dwca(tmp_path / "a.zip", preds)
    assert not (tmp_path / "a.zip").exists()
    assert license_uri("cc-by-nc-4.0").endswith("/by-nc/4.0/legalcode")
    assert license_uri("https://creativecommons.org/licenses/by/4.0/") == license_uri("CC-BY-4.0")
    with pytest.raises(DataError, match="GBIF"):
        license_uri("CC-BY-SA-4.0")


def test_sidecar_defaults_and_media_urls(tmp_path: Path, examples_dir: Path) -> None:
    preds = _preds(tmp_path, examples_dir)
    root = tmp_path / "survey"
    names = [Path(p.source or "").relative_to(root).as_posix() for p in preds]
    sidecar = tmp_path / "side.csv"
    sidecar.write_text(
        "photo,eventDate,decimalLatitude,decimalLongitude,locality\n"
        f"{names[0]},2019-08-05,61.2,-150.1,Cook Inlet\n"
        f"{Path(names[1]).name},2019-08-06,,,\n"
    )
    ds = DatasetMetadata(license="CC0-1.0")
    occ = to_occurrences(
        preds,
        dataset=ds,
        per_image=read_sidecar(sidecar),
        defaults={"countryCode": "US", "locality": "Alaska"},
        media_base_url="https://data.example.org/photos/",
        media_root=root,
    )
    assert occ[0]["eventDate"] == "2019-08-05"
    assert occ[0]["decimalLatitude"] == "61.2"
    assert occ[0]["locality"] == "Cook Inlet"  # the sidecar wins over the survey default
    assert occ[1]["eventDate"] == "2019-08-06"  # matched by file name
    assert occ[1]["locality"] == "Alaska"
    assert occ[2]["countryCode"] == "US"
    assert occ[0]["associatedMedia"] == f"https://data.example.org/photos/{names[0]}"
    with pytest.raises(DataError, match="not under the media root"):
        media_url("/elsewhere/x.jpg", "https://a.org/", root)
    bad = tmp_path / "bad.csv"
    bad.write_text("photo,decimalLatitude\nx.jpg,123\n")
    with pytest.raises(DataError, match="outside"):
        read_sidecar(bad)
    bad.write_text("photo,colour\nx.jpg,blue\n")
    with pytest.raises(DataError, match="not Darwin Core terms"):
        read_sidecar(bad)


def test_export_dwc_reads_the_tools_own_csv(
    tmp_path: Path, examples_dir: Path, gallery_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dwca_reader = pytest.importorskip("dwca.read")
    queries = str(examples_dir / "belugas" / "queries")
    for suffix in ("csv", "jsonl"):
        assert main(["identify", queries, "--gallery", str(gallery_dir), "--output",
                     str(tmp_path / f"r.{suffix}")]) == 0  # fmt: skip
    assert read_results(tmp_path / "r.csv") == read_results(tmp_path / "r.jsonl")
    capsys.readouterr()
    code, out, err = run(
        [
            "export-dwc",
            str(tmp_path / "r.csv"),
            "--out",
            str(tmp_path / "a.zip"),
            "--license",
            "CC-BY-4.0",
            "--media-base-url",
            "https://x.org/p",
            "--media-root",
            queries,
        ],
        capsys,
    )
    assert code == 0, err
    assert "12 occurrences" in out
    with dwca_reader.DwCAReader(str(tmp_path / "a.zip")) as dwca:
        rows = list(dwca)
        assert len(rows) == 12
        media = rows[0].extensions[0].data["http://purl.org/dc/terms/identifier"]
        assert media.startswith("https://x.org/p/")
    old_format = tmp_path / "old.csv"
    old_format.write_text(
        "source,is_cetacean,gate_score,individual_id,is_new_individual,score,species,"
        "candidates,rejection_reason,sha256\nx.jpg,True,0.9,w1,False,0.8,beluga,w1 w2,,\n"
    )
    code, _out, err = run(
        ["export-dwc", str(old_format), "--out", str(tmp_path / "b.zip"), "--license", "CC0-1.0"],
        capsys,
    )
    assert code == 2
    assert "old.csv" in one_line_error(err)


# --- end to end: a season, with a crash in the middle ----------------------------------


def _write_catalog(path: Path, rows: list[dict[str, str]], images: Path) -> None:
    """Our users' own column names (whale_id, path): mapped on the command line."""
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "whale_id", "encounter", "date"])
        for r in rows:
            w.writerow([r["path"], r["whale_id"], r["encounter_id"], r["date"]])


def test_a_season_end_to_end_survives_a_kill(
    tmp_path: Path, beluga_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dwca_reader = pytest.importorskip("dwca.read")
    with (beluga_dir / "metadata.csv").open() as fh:
        meta = list(csv.DictReader(fh))
    by_year = {y: [r for r in meta if r["date"].startswith(y)] for y in ("2017", "2018", "2019")}
    old, newer = by_year["2017"][:40], by_year["2018"][:20]
    _write_catalog(tmp_path / "2017.csv", old, beluga_dir)
    _write_catalog(tmp_path / "2018.csv", newer, beluga_dir)
    cols = ["--id-column", "whale_id", "--image-column", "path", "--images", str(beluga_dir)]
    gal = tmp_path / "catalogue"
    assert (
        main(["gallery", "build", "--csv", str(tmp_path / "2017.csv"), *cols, "--out", str(gal)])
        == 0
    )
    assert main(["gallery", "add", str(gal), "--csv", str(tmp_path / "2018.csv"), *cols]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in gal.iterdir() if p.is_file()}
    code, _out, err = run(
        ["gallery", "build", "--csv", str(tmp_path / "2017.csv"), *cols, "--out", str(gal)], capsys
    )
    assert code == 2
    assert "gallery add" in one_line_error(err)
    assert {p.name: p.read_bytes() for p in gal.iterdir() if p.is_file()} == before
    assert len(Gallery.load(gal)) == 60

    # The 2019 survey: photos in day folders, dates and places in a sidecar.
    survey = tmp_path / "survey2019"
    sidecar_rows = []
    photos = by_year["2019"][:90]
    for i, r in enumerate(photos):
        day = survey / f"day{i % 3 + 1}"
        day.mkdir(parents=True, exist_ok=True)
        shutil.copy(beluga_dir / r["path"], day / Path(r["path"]).name)
        sidecar_rows.append((f"{day.name}/{Path(r['path']).name}", r["date"]))
    sidecar = tmp_path / "sidecar.csv"
    with sidecar.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["photo", "eventDate", "decimalLatitude", "decimalLongitude"])
        for name, date in sidecar_rows:
            w.writerow([name, date, "61.1", "-150.6"])

    results = tmp_path / "results.jsonl"
    identify = ["identify", str(survey), "--gallery", str(gal), "--output", str(results)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ecomarine", *identify, "--batch-size", "1", "--workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and results.read_text().count("\n") >= 10:
            break
        time.sleep(0.05)
    proc.kill()  # a crash midway: no cleanup, no flush at exit
    proc.wait()
    done = results.read_text().count("\n")
    assert 10 <= done < len(photos), "the kill did not land mid-run"
    with results.open("a") as fh:
        fh.write('{"source": "half a rec')  # and a record torn in the middle

    dwc = ["--license", "CC-BY-4.0", "--dataset-id", "cook-inlet-2019", "--sidecar", str(sidecar)]
    code, out, err = run([*identify, "--resume", "--dwca", str(tmp_path / "a.zip"), *dwc], capsys)
    assert code == 0, err
    assert f"{done} of {len(photos)} photos done" in out
    preds = read_results(results)
    assert sorted(p.source or "" for p in preds) == sorted(
        str(p) for p in survey.rglob("*.jpg")
    )  # every photo once: none lost, none twice

    with dwca_reader.DwCAReader(str(tmp_path / "a.zip")) as archive:
        rows = list(archive)
        assert len(rows) == sum(p.accepted for p in preds)
        dates = {r.data["http://rs.tdwg.org/dwc/terms/eventDate"] for r in rows}
        assert dates <= {r["date"] for r in photos}
        assert {r.data["http://rs.tdwg.org/dwc/terms/decimalLatitude"] for r in rows} == {"61.1"}
        first_ids = {r.id for r in rows}

    # A better model next year: the same photos keep their occurrence ids.
    from ecomarine import Identifier

    Identifier.from_pretrained("embedded-imagenet").save_pretrained(tmp_path / "model2")
    code, _out, err = run(
        [
            "identify",
            str(survey),
            "--model",
            str(tmp_path / "model2"),
            "--output",
            str(tmp_path / "r2.csv"),
            "--dwca",
            str(tmp_path / "b.zip"),
            *dwc,
        ],
        capsys,
    )
    assert code == 0, err
    with dwca_reader.DwCAReader(str(tmp_path / "b.zip")) as archive:
        rows2 = list(archive)
        assert {r.id for r in rows2} == first_ids
        by = {r.data["http://rs.tdwg.org/dwc/terms/identifiedBy"] for r in rows2}
        assert all("embedded-imagenet" in x for x in by)
