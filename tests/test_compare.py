"""``ecomarine compare``, ``ecomarine models`` and ``gallery calibrate`` on real beluga photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ecomarine import Gallery, Identifier
from ecomarine.catalog import read_catalog_csv
from ecomarine.cli import main
from ecomarine.evaluation import evaluate_open_set

from .helpers import example_catalogue


def test_compare_two_local_models(
    examples_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    belugas = examples_dir / "belugas"
    imagenet = Identifier.from_pretrained("embedded-imagenet", device="cpu")
    local = imagenet.save_pretrained(tmp_path / "imagenet")
    out = tmp_path / "compare.json"
    code = main(
        [
            "compare",
            "--models",
            "embedded",
            str(local),
            "--gallery-csv",
            str(belugas / "gallery.csv"),
            "--query-csv",
            str(belugas / "queries.csv"),
            "--images",
            str(belugas),
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    rows = {r["source"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"embedded", str(local)}
    for source in rows:
        assert source in printed
    # Each row is the plain evaluation of that model, threshold by leave-encounter-out.
    gallery = read_catalog_csv(belugas / "gallery.csv", belugas)
    queries = read_catalog_csv(belugas / "queries.csv", belugas)
    direct = evaluate_open_set(imagenet, gallery, queries, calibrate_on_gallery=True)
    got = rows[str(local)]["report"]
    assert got["threshold_source"] == "leave-encounter-out on the gallery"
    assert got["threshold"] == pytest.approx(direct.threshold)
    assert got["top1"] == pytest.approx(direct.top1)
    assert got["map5"] == pytest.approx(direct.map5)
    assert got["n_queries"] == len(queries)
    assert rows["embedded"]["photos_per_second"] > 0
    # The table lists the figures it measured.
    assert f"{rows['embedded']['report']['top1']:.3f}" in printed


def test_compare_refuses_bad_models_before_loading(
    examples_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    belugas = examples_dir / "belugas"
    args = ["--gallery-csv", str(belugas / "gallery.csv"), "--query-csv"]
    args += [str(belugas / "queries.csv"), "--images", str(belugas)]
    assert main(["compare", *args]) == 2
    assert main(["compare", "--models", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert "not a model folder" in err
    assert "Traceback" not in err


def test_models_lists_sources_and_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--json", "--cache-dir", str(tmp_path)]) == 0
    rows = {r["source"]: r for r in json.loads(capsys.readouterr().out)}
    mega = rows["hf-hub:BVRA/MegaDescriptor-L-384"]
    assert mega["license"] == "cc-by-nc-4.0"
    assert mega["input"] == "384x384"
    assert mega["cached"] is False
    assert rows["embedded"]["cached"] is True
    for source in (
        "hf-hub:conservationxlabs/miewid-msv3",
        "hf-hub:timm/vit_small_patch14_dinov2.lvd142m",
    ):
        assert source in rows
    # Cached once its files are in the cache.
    snap = tmp_path / "models--BVRA--MegaDescriptor-L-384" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    for name in ("config.json", "pytorch_model.bin"):
        (snap / name).write_text("{}")
    (tmp_path / "models--BVRA--MegaDescriptor-L-384" / "refs").mkdir()
    (tmp_path / "models--BVRA--MegaDescriptor-L-384" / "refs" / "main").write_text("a" * 40)
    assert main(["models", "--json", "--cache-dir", str(tmp_path)]) == 0
    rows = {r["source"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["hf-hub:BVRA/MegaDescriptor-L-384"]["cached"] is True
    assert main(["models"]) == 0
    assert "MegaDescriptor-T-224" in capsys.readouterr().out


def test_gallery_calibrate_stores_a_leave_encounter_out_threshold(
    examples_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = example_catalogue(examples_dir, tmp_path / "gallery")
    expected = Gallery.load(folder).calibrate_new_individual(apply=False)
    assert main(["gallery", "calibrate", str(folder), "--dry-run"]) == 0
    assert "not stored" in capsys.readouterr().out
    assert Gallery.load(folder).new_individual_threshold is None
    assert main(["gallery", "calibrate", str(folder)]) == 0
    assert f"{expected.threshold:.3f}" in capsys.readouterr().out
    stored = Gallery.load(folder).new_individual_threshold
    assert stored is not None
    assert np.isclose(stored, expected.threshold)
