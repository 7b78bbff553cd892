"""The field's published models through the loading factory, from a local Hugging Face cache.

Each fixture is a tiny model (small widths, random weights) written in the layout its
publisher uses: MegaDescriptor (timm Swin, ``pytorch_model.bin`` in the original Swin key
order with a classifier), DINOv2 (timm's own ``save_for_hf``), MiewID (transformers config,
``backbone.``/``pooling.``/``bn.``/``final.`` tensors) and open_clip
(``open_clip_config.json``, the whole CLIP in ``open_clip_model.safetensors``). Each is
loaded offline through ``Identifier.from_pretrained`` and checked against a hand
computation with timm, open_clip and torch.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torchvision import transforms as T

from ecomarine import ConfigError, Identifier, UnsafeFileError
from ecomarine.transforms import preprocess

from .helpers import populate_hf_cache

MEGA_REPO = "BVRA/MegaDescriptor-T-224"
DINO_REPO = "timm/vit_small_patch14_dinov2.lvd142m"
MIEW_REPO = "conservationxlabs/miewid-msv3"
CLIP_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"

SWIN_ARGS = {"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}
DINO_ARGS = {"embed_dim": 24, "depth": 1, "num_heads": 2, "img_size": 70}
CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 1, "layers": 1},
}
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _card(license_id: str) -> str:
    return f"---\nlicense: {license_id}\nlibrary_name: timm\n---\n# A model\n"


def _old_swin_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original Swin key order (downsample at the end of a stage, ``head.*``)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        old = re.sub(
            r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key
        )
        out[old.replace("head.fc.", "head.")] = value
    # Buffers the original code saved and timm recomputes.
    out["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    return out


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A Hugging Face cache holding the four tiny published-layout models."""
    root = tmp_path_factory.mktemp("hub")
    cache = root / "cache"
    refs: dict[str, Any] = {"cache": cache}
    torch.manual_seed(0)

    # MegaDescriptor: timm Swin, trained with a classifier, saved in the original layout.
    swin = timm.create_model("swin_tiny_patch4_window7_224", num_classes=5, **SWIN_ARGS).eval()
    folder = root / "mega"
    folder.mkdir()
    torch.save(_old_swin_layout(swin.state_dict()), folder / "pytorch_model.bin")
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architecture": "swin_tiny_patch4_window7_224",
                "num_classes": 0,
                "model_args": SWIN_ARGS,
                "pretrained_cfg": {
                    "input_size": [3, 224, 224],
                    "interpolation": "bicubic",
                    "mean": [0.485, 0.456, 0.406],
                    "std": [0.229, 0.224, 0.225],
                    "crop_pct": 0.9,
                    "classifier": "head.fc",
                    "num_classes": 0,
                },
            }
        )
    )
    (folder / "README.md").write_text(_card("cc-by-nc-4.0"))
    populate_hf_cache(cache, MEGA_REPO, folder)
    swin.reset_classifier(0)
    refs["mega"] = swin

    # DINOv2 as timm publishes it (config.json + model.safetensors from timm itself).
    dino = timm.create_model("vit_small_patch14_dinov2", num_classes=0, **DINO_ARGS).eval()
    folder = root / "dino"
    timm.models.save_for_hf(dino, str(folder), safe_serialization="both")
    (folder / "pytorch_model.bin").unlink()
    (folder / "README.md").write_text(_card("apache-2.0"))
    populate_hf_cache(cache, DINO_REPO, folder)
    refs["dino"] = dino

    # MiewID: a timm backbone without its classifier, GeM, a BatchNorm neck, a training head.
    backbone = timm.create_model("test_efficientnet", num_classes=0).eval()
    width = backbone.num_features
    bn = torch.nn.BatchNorm1d(width).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state["pooling.p"] = torch.tensor([2.7])
    state.update({f"bn.{k}": v for k, v in bn.state_dict().items()})
    state["final.wmetric_classify.weight"] = torch.randn(3 * 7, width)
    folder = root / "miew"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["MiewIdNet"],
                "auto_map": {
                    "AutoConfig": "configuration_miewid.MiewIdNetConfig",
                    "AutoModel": "modeling_miewid.MiewIdNet",
                },
                "model_type": "miewid",
                "model_name": "test_efficientnet",
                "n_classes": 7,
                "loss_module": "arcface_subcenter_dynamic",
                "use_fc": False,
                "fc_dim": 512,
                "k": 3,
                "pretrained": True,
                "torch_dtype": "float32",
            }
        )
    )
    # Never run: the loader reads tensors, not code.
    (folder / "modeling_miewid.py").write_text("raise SystemExit('remote code was run')\n")
    populate_hf_cache(cache, MIEW_REPO, folder)
    refs["miew"] = (backbone, 2.7, bn)

    # open_clip: the whole CLIP (image and text towers) in one safetensors file.
    import open_clip

    clip = open_clip.model.CLIP(**CLIP_CFG).eval()
    folder = root / "clip"
    folder.mkdir()
    save_file(
        {k: v.contiguous() for k, v in clip.state_dict().items()},
        str(folder / "open_clip_model.safetensors"),
    )
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": CLIP_CFG, "preprocess_cfg": {"mean": CLIP_MEAN, "std": CLIP_STD}})
    )
    (folder / "README.md").write_text(_card("mit"))
    populate_hf_cache(cache, CLIP_REPO, folder)
    refs["clip"] = clip
    return refs


@pytest.fixture
def offline(hub_cache: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache: Path = hub_cache["cache"]
    return cache


def _load(repo: str, cache: Path, **kwargs: Any) -> Identifier:
    return Identifier.from_pretrained(f"hf-hub:{repo}", cache_dir=cache, device="cpu", **kwargs)


def _batch(size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))


def test_megadescriptor_loads_offline_like_timm(
    hub_cache: dict[str, Any], offline: Path, whale_jpeg: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ecomarine"):
        ident = _load(MEGA_REPO, offline)
    # The licence is said at load and travels with the config.
    assert "cc-by-nc-4.0" in caplog.text
    assert "non-commercial" in caplog.text
    assert ident.config.license == "cc-by-nc-4.0"
    assert ident.config.source == f"hf-hub:{MEGA_REPO}"
    assert ident.head is None
    assert ident.embedding_size == hub_cache["mega"].num_features
    x = _batch((224, 224))
    expected = F.normalize(hub_cache["mega"](x), dim=1)
    got = ident.embed_tensor(x)
    assert torch.allclose(got, expected, atol=1e-5)
    # The card's transform (Resize((224, 224)), Normalize(0.5, 0.5)), not config.json's.
    pp = ident.config.preprocess
    assert (pp.resize, pp.mean, pp.std, pp.crop_pct) == ("squash", (0.5,) * 3, (0.5,) * 3, 1.0)
    img = Image.open(whale_jpeg).convert("RGB")
    card = T.Compose([T.Resize((224, 224)), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    hand = card(img).numpy()
    assert np.abs(preprocess(img, pp) - hand).max() < 0.02  # a grey level or two
    with torch.inference_mode():
        ref = F.normalize(hub_cache["mega"](torch.from_numpy(hand)[None]), dim=1).numpy()
    # The inference path decodes JPEGs at a reduced scale first: a random network sees it.
    assert float(ident.embed([whale_jpeg])[0] @ ref[0]) > 0.99


def test_dinov2_from_timm_layout(
    hub_cache: dict[str, Any], offline: Path, whale_jpeg: Path
) -> None:
    ident = _load(DINO_REPO, offline)
    assert ident.config.license == "apache-2.0"
    net = hub_cache["dino"]
    x = _batch((70, 70))
    assert torch.allclose(ident.embed_tensor(x), F.normalize(net(x), dim=1), atol=1e-5)
    # timm's own evaluation transform, from the pretrained_cfg saved with the weights.
    snapshot = next(
        (offline / "models--timm--vit_small_patch14_dinov2.lvd142m").rglob("config.json")
    )
    saved = json.loads(snapshot.read_text())["pretrained_cfg"]
    transform = timm.data.create_transform(
        **timm.data.resolve_data_config({}, pretrained_cfg=saved)
    )
    img = Image.open(whale_jpeg).convert("RGB")
    hand = transform(img).numpy()
    pp = ident.config.preprocess
    assert pp.input_size == (70, 70)
    assert pp.interpolation == "bicubic"
    assert np.abs(preprocess(img, pp) - hand).max() < 0.05


def test_miewid_read_from_tensors_without_its_code(
    hub_cache: dict[str, Any], offline: Path
) -> None:
    ident = _load(MIEW_REPO, offline)
    backbone, p, bn = hub_cache["miew"]
    assert ident.config.preprocess.input_size == (440, 440)
    x = _batch((64, 64))
    with torch.inference_mode():
        fmap = backbone.forward_features(x)
        # MiewID's GeM and BatchNorm neck, by hand.
        gem = F.avg_pool2d(fmap.clamp(min=1e-6).pow(p), fmap.shape[-2:]).pow(1.0 / p).flatten(1)
        expected = F.normalize(bn(gem), dim=1)
    assert torch.allclose(ident.embed_tensor(x), expected, atol=1e-5)


def test_open_clip_image_tower(hub_cache: dict[str, Any], offline: Path, whale_jpeg: Path) -> None:
    import open_clip

    ident = _load(CLIP_REPO, offline)
    clip = hub_cache["clip"]
    x = _batch((32, 32))
    with torch.inference_mode():
        expected = F.normalize(clip.encode_image(x), dim=1)
    assert torch.allclose(ident.embed_tensor(x), expected, atol=1e-5)
    # open_clip's own evaluation transform for these weights.
    transform = open_clip.image_transform(32, is_train=False, mean=CLIP_MEAN, std=CLIP_STD)
    img = Image.open(whale_jpeg).convert("RGB")
    assert np.abs(preprocess(img, ident.config.preprocess) - transform(img).numpy()).max() < 0.05


def test_imported_model_saves_and_reloads_with_its_licence(
    offline: Path, tmp_path: Path, whale_jpeg: Path
) -> None:
    ident = _load(MEGA_REPO, offline)
    folder = ident.save_pretrained(tmp_path / "copy")
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlicense: cc-by-nc-4.0\n")
    assert MEGA_REPO in card
    again = Identifier.from_pretrained(folder, device="cpu")
    assert again.config.license == "cc-by-nc-4.0"
    assert again.fingerprint() == ident.fingerprint()
    assert np.allclose(again.embed([whale_jpeg]), ident.embed([whale_jpeg]), atol=1e-5)


def _copy_repo(cache: Path, repo: str, dest: Path) -> Path:
    snapshot = next((cache / ("models--" + repo.replace("/", "--")) / "snapshots").iterdir())
    dest.mkdir()
    for file in snapshot.iterdir():
        (dest / file.name).write_bytes(file.read_bytes())
    return dest


@pytest.mark.parametrize(
    ("repo", "weights", "extra"),
    [
        (MIEW_REPO, "model.safetensors", "neck.bogus"),
        (CLIP_REPO, "open_clip_model.safetensors", "visual.bogus"),
        (DINO_REPO, "model.safetensors", "blocks.9.bogus"),
    ],
)
def test_missing_or_extra_keys_are_named(
    offline: Path, tmp_path: Path, repo: str, weights: str, extra: str
) -> None:
    folder = _copy_repo(offline, repo, tmp_path / "repo")
    state = load_file(str(folder / weights))
    missing = sorted(state)[len(state) // 2]
    del state[missing]
    save_file(state, str(folder / weights))
    with pytest.raises(ConfigError, match=re.escape(missing.split(".", 1)[-1])):
        Identifier.from_pretrained(folder, device="cpu")
    state = load_file(str(_copy_repo(offline, repo, tmp_path / "again") / weights))
    state[extra] = torch.zeros(1)
    save_file(state, str(tmp_path / "again" / weights))
    with pytest.raises(ConfigError, match="bogus"):
        Identifier.from_pretrained(tmp_path / "again", device="cpu")


def test_megadescriptor_missing_key_named(offline: Path, tmp_path: Path) -> None:
    folder = _copy_repo(offline, MEGA_REPO, tmp_path / "repo")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["layers.1.blocks.0.mlp.fc1.weight"]
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"layers\.1\.blocks\.0\.mlp\.fc1\.weight"):
        Identifier.from_pretrained(folder, device="cpu")


def test_pickled_objects_need_opt_in(offline: Path, tmp_path: Path) -> None:
    folder = _copy_repo(offline, MEGA_REPO, tmp_path / "repo")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    torch.save({"model": state, "args": argparse_namespace()}, folder / "pytorch_model.bin")
    with pytest.raises(UnsafeFileError, match="allow_pickle"):
        Identifier.from_pretrained(folder, device="cpu")
    ident = Identifier.from_pretrained(folder, device="cpu", allow_pickle=True)
    assert ident.config.backbone == "swin_tiny_patch4_window7_224"


def argparse_namespace() -> object:
    import argparse

    return argparse.Namespace(lr=0.1)


def test_hostile_configs_refused(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    base = {"architecture": "resnet18", "pretrained_cfg": {"input_size": [3, 64, 64]}}
    for bad, match in [
        ({**base, "architecture": "no_such_net"}, "unknown timm architecture"),
        ({**base, "model_args": {"pretrained_cfg_overlay": {"file": "/etc/passwd"}}}, "may not"),
        ({**base, "model_args": {"layers": [10**12]}}, "out-of-range"),
        ({**base, "pretrained_cfg": {"input_size": [3, 10**6, 64]}}, "input_size"),
        ({"architectures": ["MiewIdNet"]}, "model_name"),
        ({"architectures": ["MiewIdNet"], "model_name": "resnet18", "use_fc": True}, "use_fc"),
    ]:
        (folder / "config.json").write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match=match):
            Identifier.from_pretrained(folder, device="cpu")


def test_offline_cache_miss_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ecomarine import WeightsNotFoundError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError, match="offline"):
        Identifier.from_pretrained("hf-hub:BVRA/MegaDescriptor-L-384", cache_dir=tmp_path)


def test_hub_model_in_the_pipeline_and_darwin_core(
    offline: Path, tmp_path: Path, examples_dir: Path
) -> None:
    import csv
    import zipfile

    from ecomarine import Pipeline
    from ecomarine.darwin_core import DatasetMetadata, write_dwca
    from ecomarine.results import ResultsWriter, read_results

    pipe = Pipeline.from_pretrained(
        f"hf-hub:{MEGA_REPO}", gate=False, cache_dir=offline, device="cpu"
    )
    belugas = examples_dir / "belugas"
    with (belugas / "gallery.csv").open() as fh:
        rows = list(csv.DictReader(fh))[:12]
    pipe.enroll(
        [belugas / r["image"] for r in rows],
        [r["individual_id"] for r in rows],
        "beluga",
        metadata=[{"encounter": r["encounter"]} for r in rows],
    )
    assert pipe.gallery is not None
    pipe.gallery.calibrate_new_individual()
    pred = pipe.predict(belugas / rows[0]["image"])
    assert pred.model_license == "cc-by-nc-4.0"
    assert pred.model_id == "MegaDescriptor-T-224"
    assert pred.candidates[0].individual_id == rows[0]["individual_id"]  # its own photo
    # The licence survives the results files and reaches the archive's metadata.
    for name in ("r.jsonl", "r.csv"):
        with ResultsWriter(tmp_path / name) as writer:
            writer.write(pred)
        (back,) = read_results(tmp_path / name)
        assert back.model_license == "cc-by-nc-4.0"
    archive = write_dwca(tmp_path / "dwca.zip", [pred], DatasetMetadata(license="CC-BY-NC-4.0"))
    with zipfile.ZipFile(archive) as zf:
        eml = zf.read("eml.xml").decode()
    assert "MegaDescriptor-T-224 (weights licensed cc-by-nc-4.0)" in eml


def test_cli_compare_with_a_hub_model_says_its_licence(
    offline: Path,
    examples_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import huggingface_hub

    from ecomarine.cli import main

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(offline))
    belugas = examples_dir / "belugas"
    code = main(
        [
            "compare",
            "--models",
            f"hf-hub:{MEGA_REPO}",
            f"hf-hub:{DINO_REPO}",
            "--gallery-csv",
            str(belugas / "gallery.csv"),
            "--query-csv",
            str(belugas / "queries.csv"),
            "--images",
            str(belugas),
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert f"| hf-hub:{MEGA_REPO} |" in out.out
    assert "cc-by-nc-4.0" in out.out
    assert f"hf-hub:{DINO_REPO}: weights licensed apache-2.0" in out.err
    # Said when each model loads, through the licence logger the CLI always shows.
    assert "weights licensed cc-by-nc-4.0: non-commercial use only" in caplog.text
    assert f"model hf-hub:{DINO_REPO}: weights licensed apache-2.0" in caplog.text


def test_unreadable_open_clip_image_size_refused(tmp_path: Path) -> None:
    (tmp_path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": {"embed_dim": 16, "vision_cfg": {"image_size": "abc"}}})
    )
    with pytest.raises(ConfigError, match="unreadable open_clip preprocess_cfg"):
        Identifier.from_pretrained(tmp_path, device="cpu")
