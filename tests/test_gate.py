from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ecomarine import ConfigError, Gate, GateResult
from ecomarine.gate import GateConfig

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


@pytest.fixture(scope="module")
def lookalikes(gate_dir: Path) -> dict[str, list[Path]]:
    root = gate_dir / "lookalikes"
    if not (root / "manifest.csv").is_file():
        pytest.skip("the look-alike set is not here")
    with (root / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    by: dict[str, list[Path]] = {}
    for r in rows:
        by.setdefault(r["group"], []).append(root / r["relpath"])
    return {g: sorted(v)[:5] for g, v in by.items()}


def test_embedded_gate_rejects_marine_lookalikes_and_says_what_they_look_like(
    gate: Gate, lookalikes: dict[str, list[Path]]
) -> None:
    # The shipped head was fitted on these groups (the held-out figures are the benchmark's):
    # this checks that the shipped files, loaded as users load them, do what was measured.
    assert gate.config.features == "kinds_pooled"
    assert gate.config.preprocess.resize == "letterbox"
    groups = ["seal", "sea_lion_walrus_otter", "boat", "empty_sea_aerial", "kelp_rock_shore"]
    photos = [p for g in groups for p in lookalikes[g]]
    results = gate.score(photos + lookalikes["orca"] + lookalikes["fluke"], batch_size=8)
    rejected = results[: len(photos)]
    assert np.mean([not r.is_cetacean for r in rejected]) >= 0.9
    assert np.mean([r.is_cetacean for r in results[len(photos) :]]) >= 0.9
    assert all(r.looks_like is None for r in results if r.is_cetacean)
    kinds = gate.config.looks_like_kinds
    assert {"pinniped", "boat", "empty_water"} <= set(kinds)
    said = [r.looks_like for r in rejected if not r.is_cetacean]
    assert set(said) <= set(kinds)
    # The first five are seals, the next five sea lions and otters, then five boats.
    assert said[:10].count("pinniped") >= 6
    assert [r.looks_like for r in rejected[10:15]].count("boat") >= 3


def test_looks_like_reaches_predictions(lookalikes: dict[str, list[Path]]) -> None:
    from ecomarine import Pipeline, Prediction

    pipe = Pipeline.from_pretrained("embedded")
    preds = pipe.predict_many(lookalikes["boat"][:3])
    for p in preds:
        assert p.rejection_reason == "not_cetacean"
        assert pipe.gate is not None
        assert p.looks_like in pipe.gate.config.looks_like_kinds
        assert Prediction.from_dict(p.to_dict()) == p


def test_imagenet_kinds_cover_each_class_once_and_name_lookalikes() -> None:
    from ecomarine._imagenet_kinds import KIND_NAMES, KINDS, kind_masses, looks_like

    listed = [i for classes in KINDS.values() for i in classes]
    assert len(listed) == len(set(listed))
    assert all(0 <= i < 1000 for i in listed)
    logits = torch.full((3, 1000), -10.0)
    logits[0, 150] = 10.0  # sea lion
    logits[1, 510] = 10.0  # container ship
    logits[2, 148] = 10.0  # killer whale: a cetacean still "looks like" its runner-up
    logits[2, 978] = 5.0  # seashore
    masses = kind_masses(logits)
    torch.testing.assert_close(masses.sum(1), torch.ones(3))
    assert masses[2, KIND_NAMES.index("cetacean")] > 0.99
    assert looks_like(logits) == ["pinniped", "boat", "empty_water_or_shore"]


def test_gate_in_the_earlier_log_probs_format_still_loads(tmp_path: Path) -> None:
    from ecomarine._gate_embedded import EmbeddedBackend

    weight = torch.zeros(1000)
    weight[147] = weight[148] = 1.0
    old = Gate(EmbeddedBackend(weight, -2.0), GateConfig(threshold=0.4))
    folder = old.save_pretrained(tmp_path / "old-gate")
    data = json.loads((folder / "gate.json").read_text())
    del data["features"]  # written before the key existed
    (folder / "gate.json").write_text(json.dumps(data))
    again = Gate.from_pretrained(folder)
    assert again.config.features == "log_probs"
    batch = torch.randn(2, 3, 224, 224)
    np.testing.assert_allclose(again.score_tensor(batch), old.score_tensor(batch), rtol=1e-6)
    data["features"] = "kinds_pooled"  # a head of the wrong width for these features
    (folder / "gate.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"head\.weight"):
        Gate.from_pretrained(folder)
    data["features"] = "log_probs"
    data["looks_like_kinds"] = ["boat", "pinniped"]  # named, but no looks-like tensors
    (folder / "gate.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="kind_head"):
        Gate.from_pretrained(folder)


def test_fit_gate_head_matches_a_naive_penalised_logistic_regression() -> None:
    from ecomarine._gate_embedded import fit_gate_head

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=gen, dtype=torch.float64)
    x[:, 3] = x[:, 3] * 40 + 7  # badly scaled: standardised before the penalty applies
    y = x[:, 0] - 0.5 * x[:, 1] + 0.02 * x[:, 3] + 0.3 * torch.randn(200, generator=gen) > 0
    penalty = torch.tensor([0.001, 0.001, 0.05, 0.05, 0.05], dtype=torch.float64)
    std = torch.tensor([False, False, False, True, False])
    w, b = fit_gate_head(x, y.double(), standardize=std, l2=penalty, max_iter=500)
    # Reference: plain gradient descent on the same objective, written out.
    mean, scale = torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float64)
    mean[3], scale[3] = x[:, 3].mean(), x[:, 3].std() + 1e-6
    xs = (x - mean) / scale
    yf = y.double()
    sw = torch.where(yf > 0, 0.5 / yf.mean(), 0.5 / (1 - yf.mean()))
    rw, rb = torch.zeros(5, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    for _ in range(20000):
        p = torch.sigmoid(xs @ rw + rb)
        g = sw * (p - yf) / sw.sum()
        rw -= 0.5 * (xs.T @ g + 2 * penalty * rw)
        rb -= 0.5 * g.sum()
    np.testing.assert_allclose(w.numpy(), (rw / scale).numpy(), atol=2e-4)
    assert b == pytest.approx(float(rb - (rw / scale * mean).sum()), abs=2e-4)
    with pytest.raises(ConfigError, match="l2"):
        fit_gate_head(x, y.double(), l2=torch.ones(3))


def test_fit_kind_head_matches_a_naive_softmax_regression() -> None:
    from ecomarine._gate_embedded import fit_kind_head

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(150, 4, generator=gen, dtype=torch.float64)
    kinds = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()  # three kinds
    w, b = fit_kind_head(x, kinds, 3, l2=0.01, max_iter=500)
    rw = torch.zeros(3, 4, dtype=torch.float64)
    rb = torch.zeros(3, dtype=torch.float64)
    onehot = torch.nn.functional.one_hot(kinds, 3).double()
    for _ in range(20000):
        g = (torch.softmax(x @ rw.T + rb, dim=1) - onehot) / len(kinds)
        rw -= 0.5 * (g.T @ x + 2 * 0.01 * rw)
        rb -= 0.5 * g.sum(0)
    # Softmax logits are defined up to a shared shift: compare the centred ones.
    np.testing.assert_allclose(w.numpy(), rw.float().numpy(), atol=2e-3)
    np.testing.assert_allclose((b - b.mean()).numpy(), (rb - rb.mean()).float().numpy(), atol=2e-3)
    with pytest.raises(ConfigError, match="kind indices"):
        fit_kind_head(x, kinds + 5, 3)


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
    negatives = gate.config.negative_prompts
    assert {
        "a photo of a seal",
        "an aerial photo of empty sea",
        "a photo of rocks and kelp",
    } <= set(negatives)
    photos = sample["happywhale"][:3] + sample["scene"][:2]
    results = gate.score(photos)
    before = [r.score for r in results]
    assert all(0.0 <= s <= 1.0 for s in before)
    # A rejected photo says which negative prompt it matched best; an accepted one does not.
    assert all((r.looks_like in negatives) != r.is_cetacean for r in results)
    folder = gate.save_pretrained(tmp_path / "clip-gate")

    def no_text(*args: object, **kwargs: object) -> None:
        raise AssertionError("text encoder ran on load")

    import open_clip

    monkeypatch.setattr(open_clip.model.CLIP, "encode_text", no_text)
    again = Gate.from_pretrained(folder)
    assert again.name == "clip"
    assert again.threshold == 0.3
    reloaded = again.score(photos)
    np.testing.assert_allclose([r.score for r in reloaded], before, rtol=1e-5, atol=1e-6)
    assert [r.looks_like for r in reloaded] == [r.looks_like for r in results]


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


def test_clip_gate_with_lookalike_prompts_is_evaluated_by_the_cli(
    tmp_path: Path,
    tiny_clip_name: str,
    gate_dir: Path,
    lookalikes: dict[str, list[Path]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ecomarine.cli import main
    from ecomarine.gate import clip_gate

    torch.manual_seed(0)
    folder = clip_gate(tiny_clip_name, pretrained=None).save_pretrained(tmp_path / "clip")
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["relpath", "label", "group"])
        w.writeheader()
        for group, label in (
            ("orca", "cetacean"),
            ("seal", "non_cetacean"),
            ("boat", "non_cetacean"),
        ):
            for p in lookalikes[group][:3]:
                w.writerow({"relpath": str(p), "label": label, "group": group})
    out_json = tmp_path / "e.json"
    code = main(
        [
            "gate",
            "evaluate",
            "--backend",
            str(folder),
            "--manifest",
            str(manifest),
            "--json",
            str(out_json),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    data = json.loads(out_json.read_text())
    assert data["backend"] == "clip"
    assert set(data["per_group"]) == {"orca", "seal", "boat"}
    assert {"roc_auc_vs_cetaceans"} <= set(data["per_group"]["seal"])
    assert "AUC vs cetaceans" in printed
