"""Ensembles of identifiers, checked against a naive reference on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ecomarine import ConfigError, Gallery, Identifier
from ecomarine.config import HeadConfig, IdentifierConfig
from ecomarine.ensemble import ensemble_identifiers, ensemble_members
from ecomarine.transforms import load_batch

from .test_identifier import tiny_config, tiny_identifier


@pytest.fixture(scope="module")
def photos(gate_dir: Path) -> list[Path]:
    return sorted((gate_dir / "positives" / "happywhale").glob("*.jpg"))[:5]


def _members(n: int = 2) -> list[Identifier]:
    out = []
    for seed in range(n):
        torch.manual_seed(100 + seed)
        ident = Identifier(tiny_config(), ["w1", "w2", "w3"], {"w1": "beluga"}).eval()
        with torch.no_grad():  # distinct BatchNorm statistics per member
            ident.neck[1].running_mean.uniform_(-0.5, 0.5)
            ident.neck[1].running_var.uniform_(0.5, 2.0)
        out.append(ident)
    return out


def _naive(members: list[Identifier], photos: list[Path], kind: str) -> np.ndarray:
    parts = [m.embed(photos, kind=kind, num_workers=1) for m in members]  # type: ignore[arg-type]
    return np.concatenate(parts, axis=1) / np.sqrt(len(members))


@pytest.mark.parametrize("kind", ["embedding", "features"])
def test_ensemble_vectors_are_the_scaled_concatenation(photos: list[Path], kind: str) -> None:
    members = _members(3)
    ens = ensemble_identifiers(members, name="trio")
    got = ens.embed(photos, kind=kind, num_workers=1)  # type: ignore[arg-type]
    want = _naive(members, photos, kind)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # So a cosine similarity is the mean of the members' similarities.
    sims = [m.embed(photos, kind=kind, num_workers=1) for m in members]  # type: ignore[arg-type]
    mean_sim = np.mean([s @ s.T for s in sims], axis=0)
    np.testing.assert_allclose(got @ got.T, mean_sim, atol=1e-5)
    width = members[0].embedding_size if kind == "embedding" else members[0].num_features
    assert got.shape == (len(photos), 3 * width)


def test_ensemble_head_averages_member_cosines(photos: list[Path]) -> None:
    members = _members(2)
    ens = ensemble_identifiers(members, name="duo")
    assert ens.head is not None
    assert ens.labels == ["w1", "w2", "w3"]
    with torch.inference_mode():
        got = ens.head.cosine(torch.from_numpy(ens.embed(photos, num_workers=1)))
        want = torch.stack(
            [
                m.head.cosine(torch.from_numpy(m.embed(photos, num_workers=1)))  # type: ignore[union-attr]
                for m in members
            ]
        ).mean(0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    ranked = ens.classify(photos[:1], top_k=3)[0]
    assert abs(sum(m.score for m in ranked) - 1.0) < 1e-4
    assert ranked[0].individual_id in {"w1", "w2", "w3"}


def test_ensemble_round_trip_and_half_precision(photos: list[Path], tmp_path: Path) -> None:
    ens = ensemble_identifiers(_members(2), name="duo")
    ens.config = ens.config.with_thresholds({"embedding": 0.3})
    want = ens.embed(photos, num_workers=1)
    ens.save_pretrained(tmp_path / "fp32")
    loaded = Identifier.from_pretrained(tmp_path / "fp32", device="cpu")
    assert loaded.config.members == 2
    assert loaded.new_individual_threshold == 0.3
    np.testing.assert_allclose(loaded.embed(photos, num_workers=1), want, atol=1e-6)
    assert loaded.fingerprint() == ens.fingerprint()

    ens.save_pretrained(tmp_path / "fp16", dtype=torch.float16)
    size32 = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    size16 = (tmp_path / "fp16" / "model.safetensors").stat().st_size
    assert size16 < 0.6 * size32
    half = Identifier.from_pretrained(tmp_path / "fp16", device="cpu")
    assert next(half.parameters()).dtype == torch.float32  # cast back on load
    got = half.embed(photos, num_workers=1)
    assert np.min(np.sum(got * want, axis=1)) > 0.999


def test_ensemble_fingerprint_and_gallery(photos: list[Path]) -> None:
    members = _members(2)
    ens = ensemble_identifiers(members, name="duo")
    assert ens.fingerprint() not in {m.fingerprint() for m in members}
    assert ens.fingerprint("features") != ens.fingerprint("embedding")
    g = Gallery(fingerprint=ens.fingerprint())
    emb = ens.embed(photos, num_workers=1)
    g.add(emb, [f"id{i}" for i in range(len(photos))])
    assert [r[0].individual_id for r in g.search(emb, 1)] == [f"id{i}" for i in range(len(photos))]


def test_single_network_config_is_unchanged() -> None:
    assert "members" not in tiny_config().to_dict()
    assert tiny_config(members=2).to_dict()["members"] == 2
    data = tiny_config().to_dict()
    assert IdentifierConfig.from_dict({**data, "members": 3}).members == 3
    with pytest.raises(ConfigError, match="members"):
        IdentifierConfig.from_dict({**data, "members": 0})


def test_ensemble_refuses_what_cannot_be_combined() -> None:
    members = _members(2)
    with pytest.raises(ConfigError, match="at least two"):
        ensemble_identifiers(members[:1], name="x")
    other = tiny_identifier(preprocess=members[0].config.preprocess.__class__(input_size=(64, 64)))
    with pytest.raises(ConfigError, match="'preprocess'"):
        ensemble_identifiers([members[0], other], name="x")
    with pytest.raises(ConfigError, match="'embedding_size'"):
        ensemble_identifiers([members[0], tiny_identifier(embedding_size=8)], name="x")
    duo = ensemble_identifiers(members, name="duo")
    with pytest.raises(ConfigError, match="at least two"):
        ensemble_identifiers([Identifier(tiny_config(), ["w1"])], name="x")
    with pytest.raises(ConfigError, match="'embedding_size'"):
        ensemble_identifiers([duo, tiny_identifier(embedding_size=8)], name="x")


def _assert_same_model(got: Identifier, want: Identifier, photos: list[Path]) -> None:
    """Same vectors of both kinds and the same head probabilities on real photos."""
    for kind in ("embedding", "features"):
        np.testing.assert_allclose(
            got.embed(photos, kind=kind, num_workers=1),  # type: ignore[arg-type]
            want.embed(photos, kind=kind, num_workers=1),  # type: ignore[arg-type]
            atol=1e-5,
        )
    for g, w in zip(got.classify(photos, top_k=3), want.classify(photos, top_k=3), strict=True):
        assert [m.individual_id for m in g] == [m.individual_id for m in w]
        np.testing.assert_allclose([m.score for m in g], [m.score for m in w], atol=1e-5)


def test_ensemble_members_split_and_flatten(photos: list[Path], tmp_path: Path) -> None:
    members = _members(3)
    duo = ensemble_identifiers(members[:2], name="duo")
    # Split: each member computes exactly what it computed before joining.
    parts = ensemble_members(duo)
    assert [p.config.members for p in parts] == [1, 1]
    for part, original in zip(parts, members[:2], strict=True):
        _assert_same_model(part, original, photos)
    assert ensemble_members(members[2]) == [members[2]]
    # Flatten: an ensemble of two plus a third network is the ensemble of the three.
    saved = Identifier.from_pretrained(duo.save_pretrained(tmp_path / "duo"))
    trio = ensemble_identifiers([saved, members[2]], name="trio")
    assert trio.config.members == 3
    _assert_same_model(trio, ensemble_identifiers(members, name="trio"), photos)


def test_ensemble_without_a_shared_head(photos: list[Path]) -> None:
    torch.manual_seed(7)
    other_ids = Identifier(tiny_config(), ["a", "b", "c"]).eval()
    ens = ensemble_identifiers([_members(1)[0], other_ids], name="mixed")
    assert ens.head is None
    assert ens.config.head is None
    assert ens.labels == []
    with pytest.raises(ConfigError, match="no ArcFace head"):
        ens.classify(photos[:1])
    sub = tiny_identifier(head=HeadConfig(type="subcenter", s=30.0, m=0.5, k=2))
    assert ensemble_identifiers([sub, sub], name="s").head is None


# --- ecomarine ensemble ------------------------------------------------------------------


def test_cli_ensemble_calibrates_and_loads(
    tmp_path: Path, examples_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ecomarine.cli import main

    folders = []
    for i, member in enumerate(_members(2)):
        folders.append(str(member.save_pretrained(tmp_path / f"m{i}")))
    belugas = examples_dir / "belugas"
    args = [
        "ensemble",
        *folders,
        "--out",
        str(tmp_path / "ens"),
        "--name",
        "duo",
        "--csv",
        str(belugas / "gallery.csv"),
        "--calibration-csv",
        str(belugas / "queries.csv"),
        "--images",
        str(belugas),
    ]
    assert main(args) == 0, capsys.readouterr().err
    assert "ensemble of 2 written" in capsys.readouterr().out
    ens = Identifier.from_pretrained(tmp_path / "ens", device="cpu")
    assert ens.config.members == 2
    assert ens.config.name == "duo"
    assert ens.new_individual_threshold is not None
    assert ens.threshold_for("features") is not None
    card = (tmp_path / "ens" / "README.md").read_text()
    assert "ecomarine ensemble" in card
    assert "Open-set calibration" in card
    assert card.count("unknown (no training.json)") == 2

    # The threshold is the one that evaluation's own calibration picks on the saved model.
    from ecomarine.evaluation import evaluate_open_set
    from ecomarine.training import read_catalog_csv

    queries = read_catalog_csv(belugas / "queries.csv", belugas)
    report = evaluate_open_set(
        ens,
        read_catalog_csv(belugas / "gallery.csv", belugas),
        queries,
        calibration_samples=queries,
        num_workers=1,
    )
    assert report.threshold == pytest.approx(ens.new_individual_threshold, abs=1e-6)


def test_cli_ensemble_errors_are_one_line(
    tmp_path: Path, examples_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ecomarine.cli import main

    a = str(_members(1)[0].save_pretrained(tmp_path / "a"))
    b = str(tiny_identifier(embedding_size=8).save_pretrained(tmp_path / "b"))
    cal = str(examples_dir / "belugas" / "queries.csv")
    for args in (
        ["ensemble", a, b, "--out", str(tmp_path / "x")],
        ["ensemble", a, a, "--out", str(tmp_path / "y"), "--calibration-csv", cal],
        ["ensemble", a, str(tmp_path / "missing"), "--out", str(tmp_path / "z")],
    ):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: "), err
        assert err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "y").exists()


@pytest.mark.parametrize("n_members", [1, 3])
def test_embed_kinds_is_one_pass_of_both_forward_paths(photos: list[Path], n_members: int) -> None:
    members = _members(n_members)
    ident = members[0] if n_members == 1 else ensemble_identifiers(members, name="trio")
    got = ident.embed_kinds(photos, batch_size=2, num_workers=1)
    # Reference: the two separate forward paths (neck over pooled features, pooled alone).
    batch = load_batch(photos, ident.config.preprocess, 1)
    with torch.no_grad():
        want_emb = torch.nn.functional.normalize(ident(batch), dim=1).numpy()
        want_feat = torch.nn.functional.normalize(ident.pooled(batch), dim=1).numpy()
    np.testing.assert_allclose(got["embedding"], want_emb, atol=1e-5)
    np.testing.assert_allclose(got["features"], want_feat, atol=1e-5)
    for kind in ("embedding", "features"):
        np.testing.assert_allclose(got[kind], ident.embed(photos, kind=kind), atol=1e-6)  # type: ignore[arg-type]
    only = ident.embed_kinds(photos[:1], kinds=("features",))
    assert list(only) == ["features"]
    empty = ident.embed_kinds([])
    assert empty["embedding"].shape == (0, ident.embedding_size)
    assert empty["features"].shape == (0, ident.num_features)
    with pytest.raises(ConfigError, match="kinds must be"):
        ident.embed_kinds(photos[:1], kinds=("neck",))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="kinds must be"):
        ident.embed_kinds(photos[:1], kinds=())
