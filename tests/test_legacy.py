"""The EcoMarineAI checkpoint layout, written synthetically (real architecture, small head)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from ecomarine import ConfigError, Identifier, UnsafeFileError
from ecomarine.legacy import CHECKPOINT_NAME, CLASSES_NAME, SPECIES_NAME

from .helpers import populate_hf_cache

IDS = ["whale_a", "whale_b", "dolphin_c", "whale_d"]


@pytest.fixture(scope="module")
def legacy_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    backbone = timm.create_model("efficientnet_b4", pretrained=False, num_classes=0)
    state = {f"model.{k}": v for k, v in backbone.state_dict().items()}
    state["embedding.weight"] = torch.randn(512, 1792) * 0.02
    state["embedding.bias"] = torch.randn(512) * 0.02
    state["arc.weight"] = torch.randn(len(IDS), 512)
    return state


def write_legacy(
    folder: Path,
    state: dict[str, torch.Tensor],
    *,
    extra: object = None,
    classes: np.ndarray | None = None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ckpt: dict[str, object] = {"state_dict": state, "epoch": 12}
    if extra is not None:
        ckpt["hyper_parameters"] = extra
    torch.save(ckpt, folder / CHECKPOINT_NAME)
    np.save(folder / CLASSES_NAME, np.array(IDS) if classes is None else classes)
    (folder / SPECIES_NAME).write_text(
        "individual_id,species\nwhale_a,humpback_whale\nwhale_b,blue_whale\n"
        "dolphin_c,bottlenose_dolphin\nwhale_d,humpback_whale\n"
    )
    return folder


def test_legacy_import(
    tmp_path: Path, legacy_state: dict[str, torch.Tensor], whale_jpeg: Path
) -> None:
    folder = write_legacy(tmp_path / "legacy", legacy_state)
    ident = Identifier.from_pretrained(folder, device="cpu")
    assert ident.config.backbone == "efficientnet_b4"
    assert ident.config.preprocess.input_size == (512, 512)
    assert ident.embedding_size == 512
    assert ident.labels == IDS
    assert ident.species_by_id["dolphin_c"] == "bottlenose_dolphin"
    assert ident.head is not None
    torch.testing.assert_close(ident.head.weight.detach(), legacy_state["arc.weight"])
    torch.testing.assert_close(
        ident.backbone.state_dict()["conv_stem.weight"], legacy_state["model.conv_stem.weight"]
    )
    ranked = ident.classify([whale_jpeg], top_k=3)[0]
    assert len(ranked) == 3
    assert ranked[0].individual_id in IDS
    assert abs(sum(m.score for m in ident.classify([whale_jpeg], top_k=4)[0]) - 1.0) < 1e-4
    # Converted once, it saves and reloads in the ecomarine format.
    again = Identifier.from_pretrained(ident.save_pretrained(tmp_path / "converted"))
    assert again.labels == IDS


def test_pickled_checkpoint_needs_opt_in(
    tmp_path: Path, legacy_state: dict[str, torch.Tensor]
) -> None:
    folder = write_legacy(tmp_path / "pickled", legacy_state, extra=argparse.Namespace(lr=1e-3))
    with pytest.raises(UnsafeFileError, match="allow_pickle=True"):
        Identifier.from_pretrained(folder)
    ident = Identifier.from_pretrained(folder, allow_pickle=True)
    assert ident.labels == IDS


def test_object_array_classes_need_opt_in(
    tmp_path: Path, legacy_state: dict[str, torch.Tensor]
) -> None:
    folder = write_legacy(tmp_path / "objects", legacy_state, classes=np.array(IDS, dtype=object))
    with pytest.raises(UnsafeFileError, match=CLASSES_NAME):
        Identifier.from_pretrained(folder)
    assert Identifier.from_pretrained(folder, allow_pickle=True).labels == IDS


def test_unknown_key_is_named(tmp_path: Path, legacy_state: dict[str, torch.Tensor]) -> None:
    state = dict(legacy_state)
    state["teacher.proj.weight"] = torch.zeros(2, 2)
    folder = write_legacy(tmp_path / "extra", state)
    with pytest.raises(ConfigError, match=r"teacher\.proj\.weight"):
        Identifier.from_pretrained(folder)


def test_label_count_mismatch(tmp_path: Path, legacy_state: dict[str, torch.Tensor]) -> None:
    folder = write_legacy(tmp_path / "short", legacy_state, classes=np.array(IDS[:2]))
    with pytest.raises(ConfigError, match="4 rows but"):
        Identifier.from_pretrained(folder)


def test_backbone_key_mismatch_is_named(
    tmp_path: Path, legacy_state: dict[str, torch.Tensor]
) -> None:
    state = {k: v for k, v in legacy_state.items() if k != "model.bn2.weight"}
    folder = write_legacy(tmp_path / "holes", state)
    with pytest.raises(ConfigError, match=r"backbone\.bn2\.weight"):
        Identifier.from_pretrained(folder)


def test_legacy_from_prepopulated_hub_cache_offline(
    tmp_path: Path, legacy_state: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_legacy(tmp_path / "legacy", legacy_state)
    populate_hf_cache(tmp_path / "hub", "0x0000dead/ecomarineai-cetacean-effb4", folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ident = Identifier.from_pretrained(
        "0x0000dead/ecomarineai-cetacean-effb4", cache_dir=tmp_path / "hub"
    )
    assert ident.labels == IDS
