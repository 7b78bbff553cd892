from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ecomarine import ConfigError, Gate, GateResult

from .helpers import fake_hub_api


@pytest.fixture(scope="module")
def gate() -> Gate:
    return Gate.from_pretrained("embedded", device="cpu")


@pytest.fixture(scope="module")
def sample(gate_dir: Path) -> dict[str, list[Path]]:
    with (gate_dir / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    by: dict[str, list[Path]] = {}
    for r in rows:
        by.setdefault(r["group"].split(":")[0], []).append(gate_dir / r["relpath"])
    return {g: sorted(v)[:6] for g, v in by.items()}


def test_embedded_gate_separates_real_photos(gate: Gate, sample: dict[str, list[Path]]) -> None:
    pos = sample["happywhale"] + sample["dolphin"] + sample["beluga_top"]
    neg = sample["shark"] + sample["scene"]
    results = gate.score(pos + neg, batch_size=8)
    assert all(isinstance(r, GateResult) for r in results)
    assert all(0.0 <= r.score <= 1.0 for r in results)
    assert {r.backend for r in results} == {"embedded"}
    pos_s = np.array([r.score for r in results[: len(pos)]])
    neg_s = np.array([r.score for r in results[len(pos) :]])
    assert np.median(pos_s) > gate.threshold > np.median(neg_s)
    accepted = np.mean([r.is_cetacean for r in results[: len(pos)]])
    rejected = np.mean([not r.is_cetacean for r in results[len(pos) :]])
    assert accepted >= 0.8
    assert rejected >= 0.8


def test_calibrate_and_round_trip(
    tmp_path: Path, gate: Gate, sample: dict[str, list[Path]]
) -> None:
    g = Gate.from_pretrained("embedded")
    report = g.calibrate(sample["beluga_lateral"], sample["scene"], min_tpr=0.8, min_tnr=0.8)
    assert report.met_targets
    assert g.threshold == report.threshold
    assert g.config.calibration is not None
    folder = g.save_pretrained(tmp_path / "gate")
    again = Gate.from_pretrained(folder)
    assert again.threshold == g.threshold
    a = [r.score for r in g.score(sample["dolphin"][:3])]
    b = [r.score for r in again.score(sample["dolphin"][:3])]
    np.testing.assert_allclose(a, b, rtol=1e-6)
    # Precomputed scores work too, without images.
    rep = g.calibrate(np.array([0.9, 0.8]), np.array([0.1, 0.2]), apply=False)
    assert rep.tpr == 1.0
    assert rep.tnr == 1.0


def test_bad_gate_config(tmp_path: Path, gate: Gate) -> None:
    folder = gate.save_pretrained(tmp_path / "gate")
    data = json.loads((folder / "gate.json").read_text())
    data["threshold"] = 7
    (folder / "gate.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="threshold"):
        Gate.from_pretrained(folder)
    data["threshold"] = 0.5
    data["backend"] = "magic"
    (folder / "gate.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="backend"):
        Gate.from_pretrained(folder)


# --- the CLIP backend, for real, with a tiny random open_clip model ------------------------


@pytest.fixture(scope="module")
def tiny_clip_name(tmp_path_factory: pytest.TempPathFactory) -> str:
    open_clip = pytest.importorskip("open_clip")
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {
            "context_length": 77,
            "vocab_size": 49408,
            "width": 32,
            "heads": 2,
            "layers": 1,
        },
    }
    path = tmp_path_factory.mktemp("clipcfg") / "ecomarine-tiny-clip.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return "ecomarine-tiny-clip"


def test_clip_gate_scores_saves_and_reloads_without_text_pass(
    tmp_path: Path,
    tiny_clip_name: str,
    sample: dict[str, list[Path]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ecomarine.gate import clip_gate

    torch.manual_seed(0)
    gate = clip_gate(tiny_clip_name, pretrained=None, threshold=0.3)
    assert gate.name == "clip"
    assert gate.config.preprocess.input_size == (64, 64)
    assert len(gate.config.positive_prompts) == 10
    assert len(gate.config.negative_prompts) == 14
    photos = sample["happywhale"][:3] + sample["scene"][:2]
    before = [r.score for r in gate.score(photos)]
    assert all(0.0 <= s <= 1.0 for s in before)
    folder = gate.save_pretrained(tmp_path / "clip-gate")

    def no_text(*args: object, **kwargs: object) -> None:
        raise AssertionError("text encoder ran on load")

    import open_clip

    monkeypatch.setattr(open_clip.model.CLIP, "encode_text", no_text)
    again = Gate.from_pretrained(folder)
    assert again.name == "clip"
    assert again.threshold == 0.3
    np.testing.assert_allclose([r.score for r in again.score(photos)], before, rtol=1e-5, atol=1e-6)


def test_clip_prompts_are_configurable(tiny_clip_name: str) -> None:
    from ecomarine.gate import clip_gate

    g = clip_gate(
        tiny_clip_name, pretrained=None, positive=["a whale"], negative=["a rock", "a car"]
    )
    assert g.backend.text_features.shape[0] == 3  # type: ignore[attr-defined]
    with pytest.raises(ConfigError):
        clip_gate(tiny_clip_name, pretrained=None, positive=["a whale"], negative=[])


def test_gate_push_to_hub_uploads_its_files(monkeypatch: pytest.MonkeyPatch, gate: Gate) -> None:
    calls = fake_hub_api(monkeypatch)
    url = gate.push_to_hub("acme/whale-gate", token="t0k")
    assert url.endswith("/acme/whale-gate/commit/1")
    assert calls["files"] == ["gate.json", "gate.safetensors"]
    assert calls["message"] == "Upload ecomarine gate"
