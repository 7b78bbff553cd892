"""Commands never replace a user's outputs unless asked, and check arguments first."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ecomarine.cli import main


def _err(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
    assert err.count("\n") == 1, err
    return err


def test_gallery_build_refuses_to_replace_a_gallery(
    tmp_path: Path, examples_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b = examples_dir / "belugas"
    out = tmp_path / "gal"
    build = ["gallery", "build", "--csv", str(b / "gallery.csv"), "--images", str(b)]
    assert main([*build, "--out", str(out)]) == 0
    assert (
        main(["gallery", "add", str(out), "--csv", str(b / "queries.csv"), "--images", str(b)]) == 0
    )
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main([*build, "--out", str(out)]) == 2
    err = _err(capsys)
    assert "already exists" in err
    assert "gallery add" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing lost
    assert main([*build, "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "gallery.json").read_text())["count"] == 36


def test_identify_checks_every_argument_before_loading(
    tmp_path: Path, examples_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = str(next((examples_dir / "belugas" / "queries").glob("*.jpg")))
    started = time.perf_counter()
    assert main(["identify", photo, "--output", str(tmp_path / "out.txt")]) == 2
    assert ".csv or .jsonl" in _err(capsys)
    assert main(["identify", str(tmp_path / "nothere")]) == 2
    assert "no such file or folder" in _err(capsys)
    assert main(["identify", photo, "--gallery", str(tmp_path)]) == 2
    assert "not a gallery" in _err(capsys)
    assert main(["identify", photo, "--dwca", str(tmp_path / "a.txt")]) == 2
    assert ".zip" in _err(capsys)
    # None of these loaded a model: the embedded one takes seconds, these take far less.
    assert time.perf_counter() - started < 30


def test_identify_refuses_to_replace_results(
    tmp_path: Path, examples_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photo = str(next((examples_dir / "belugas" / "queries").glob("*.jpg")))
    out = tmp_path / "r.jsonl"
    out.write_text("earlier work\n")
    assert main(["identify", photo, "--output", str(out)]) == 2
    assert "already exists" in _err(capsys)
    assert out.read_text() == "earlier work\n"
    assert main(["identify", photo, "--output", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text().splitlines()[0])["source"] == photo


def test_train_and_export_refuse_existing_outputs(
    tmp_path: Path, examples_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b = examples_dir / "belugas"
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    args = ["train", "--csv", str(b / "gallery.csv"), "--images", str(b), "--out", str(model)]
    assert main(args) == 2
    assert "--resume" in _err(capsys)
    archive = tmp_path / "a.zip"
    archive.write_bytes(b"earlier")
    results = tmp_path / "r.jsonl"
    results.write_text("")
    assert main(["export-dwc", str(results), "--out", str(archive)]) == 2
    assert "already exists" in _err(capsys)
    assert archive.read_bytes() == b"earlier"
