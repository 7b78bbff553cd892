"""Files written by the previous release keep loading and predicting the same.

The fixtures in ``tests/data/release-0.1.0.dev0`` were written by ecomarine 0.1.0.dev0 before
the open-set threshold got one owner (see ``tests/data/README.md``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ecomarine import ConfigError, Gallery, Identifier, Pipeline
from ecomarine.catalog import read_catalog_csv

RELEASE = Path(__file__).resolve().parent / "data" / "release-0.1.0.dev0"
EXPECTED = json.loads((RELEASE / "expected.json").read_text())


@pytest.fixture(scope="module")
def queries(examples_dir: Path) -> list[Path]:
    rows = read_catalog_csv(examples_dir / "belugas" / "queries.csv", examples_dir / "belugas")
    return [r.path for r in rows]


def test_old_identifier_config_loads_with_both_thresholds() -> None:
    ident = Identifier.from_pretrained(RELEASE / "pipeline" / "identifier", device="cpu")
    assert ident.threshold_for("embedding") == 0.42
    assert ident.threshold_for("features") == 0.37
    assert ident.config.new_individual_thresholds == {"embedding": 0.42, "features": 0.37}
    # The fingerprint is unchanged, so galleries built with the old release still match.
    assert ident.fingerprint("embedding") == EXPECTED["fingerprint_embedding"]
    assert ident.fingerprint("features") == EXPECTED["fingerprint_features"]


def test_old_pipeline_predicts_as_before(queries: list[Path]) -> None:
    pipe = Pipeline.from_pretrained(RELEASE / "pipeline", device="cpu")
    got = [p.to_dict() for p in pipe.predict_many(queries)]
    assert len(got) == len(EXPECTED["predictions"])
    for new, old in zip(got, EXPECTED["predictions"], strict=True):
        assert Path(new["source"]).name == old["source"]
        for key in ("sha256", "is_cetacean", "is_new_individual", "new_individual_threshold"):
            assert new[key] == old[key], key
        assert new["gate_score"] == pytest.approx(old["gate_score"], abs=1e-5)
        # The tiny random network's scores differ by ~1e-7 between individuals, so the
        # ranking itself is not a stable thing to compare; the scores are.
        assert [c["score"] for c in new["candidates"]] == pytest.approx(
            [c["score"] for c in old["candidates"]], abs=1e-5
        )


def test_old_galleries_keep_their_threshold_as_an_override(tmp_path: Path) -> None:
    copied = Gallery.load(RELEASE / "gallery")
    assert copied.new_individual_threshold == 0.42  # version 1 stored the model's copy
    calibrated = Gallery.load(RELEASE / "gallery-calibrated")
    assert calibrated.new_individual_threshold == EXPECTED["calibrated_threshold"]
    assert len(copied) == len(calibrated) == 36
    # Saved again, it is a version-2 gallery that still holds the override.
    folder = calibrated.save(tmp_path / "g")
    manifest = json.loads((folder / "gallery.json").read_text())
    assert manifest["format_version"] == 2
    assert Gallery.load(folder).new_individual_threshold == EXPECTED["calibrated_threshold"]


def test_model_threshold_update_reaches_an_existing_gallery(
    tmp_path: Path, queries: list[Path]
) -> None:
    """A gallery without an override follows its model when the model is recalibrated."""
    model = tmp_path / "model"
    shutil.copytree(RELEASE / "pipeline" / "identifier", model)
    ident = Identifier.from_pretrained(model, device="cpu")
    pipe = Pipeline(ident, gate=None)
    pipe.enroll(queries[:6], [f"w{i}" for i in range(6)])
    assert pipe.gallery is not None
    assert pipe.gallery.new_individual_threshold is None  # no copy of the model's
    pipe.gallery.save(tmp_path / "gallery")
    before = Pipeline.from_pretrained(model, gallery=tmp_path / "gallery", gate=False)
    assert before.predict(queries[0]).new_individual_threshold == 0.42
    # Recalibrated in place (as `ecomarine calibrate` does): same weights, new threshold.
    ident.config = ident.config.with_thresholds({"embedding": 0.99})
    ident.save_pretrained(model)
    after = Pipeline.from_pretrained(model, gallery=tmp_path / "gallery", gate=False)
    pred = after.predict(queries[0])
    assert pred.new_individual_threshold == 0.99
    assert after.new_individual_threshold == 0.99
    assert "model" in after.threshold_source
    # An explicit override on the gallery wins, and says so.
    after.gallery.new_individual_threshold = 0.5  # type: ignore[union-attr]
    assert after.predict(queries[0]).new_individual_threshold == 0.5
    assert "gallery" in after.threshold_source


def test_version_1_config_refuses_the_new_key(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(RELEASE / "pipeline" / "identifier", folder)
    data = json.loads((folder / "config.json").read_text())
    data["new_individual_thresholds"] = {"embedding": 0.5}
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="new_individual_thresholds"):
        Identifier.from_pretrained(folder)


def test_saved_files_use_the_new_format(tmp_path: Path) -> None:
    ident = Identifier.from_pretrained(RELEASE / "pipeline" / "identifier", device="cpu")
    data = json.loads((ident.save_pretrained(tmp_path / "m") / "config.json").read_text())
    assert data["format_version"] == 2
    assert data["new_individual_thresholds"] == {"embedding": 0.42, "features": 0.37}
    assert "new_individual_threshold" not in data
    assert Identifier.from_pretrained(tmp_path / "m").config == ident.config


def test_pipeline_saved_without_a_gate_reloads_without_one(tmp_path: Path) -> None:
    ident = Identifier.from_pretrained(RELEASE / "pipeline" / "identifier", device="cpu")
    folder = Pipeline(ident, gate=None).save_pretrained(tmp_path / "p")
    assert json.loads((folder / "pipeline.json").read_text())["gate"] is None
    assert Pipeline.from_pretrained(folder).gate is None


def test_pipeline_without_an_identifier_is_refused(tmp_path: Path) -> None:
    """A null identifier must not fall back to the bundled model."""
    folder = tmp_path / "p"
    shutil.copytree(RELEASE / "pipeline", folder)
    cfg = json.loads((folder / "pipeline.json").read_text())
    cfg["identifier"] = None
    (folder / "pipeline.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="'identifier' must name"):
        Pipeline.from_pretrained(folder)


@pytest.mark.parametrize("value", ["../outside", "/etc", "a/../../b"])
def test_pipeline_parts_stay_inside_the_folder(tmp_path: Path, value: str) -> None:
    folder = tmp_path / "p"
    shutil.copytree(RELEASE / "pipeline", folder)
    cfg = json.loads((folder / "pipeline.json").read_text())
    cfg["identifier"] = value
    (folder / "pipeline.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="inside"):
        Pipeline.from_pretrained(folder)
