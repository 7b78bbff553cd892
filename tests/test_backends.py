"""The ONNX Runtime backend of the fused path: same answers as PyTorch, or a clear refusal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")

from ecomarine import ConfigError, Identifier
from ecomarine._fuse import FusedCache, Traced, _OrtGraph, inference_backend

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the exporter's own


def test_onnxruntime_embeddings_equal_eager(
    monkeypatch: pytest.MonkeyPatch, examples_dir: Path
) -> None:
    photos = sorted((examples_dir / "belugas" / "queries").glob("*.jpg"))[:6]
    ident = Identifier.from_pretrained("embedded")
    monkeypatch.setenv("ECOMARINE_FUSE", "0")
    eager = ident.embed(photos, batch_size=6)
    monkeypatch.setenv("ECOMARINE_FUSE", "1")
    monkeypatch.setenv("ECOMARINE_BACKEND", "onnxruntime")
    assert inference_backend() == "onnxruntime"
    for _ in range(3):  # the session is built once a shape has come back
        ort = ident.embed(photos, batch_size=6)
    graphs = list(ident.fused._graphs.values())
    assert any(isinstance(g, _OrtGraph) for g in graphs)
    cos = np.sum(eager * ort, axis=1)
    assert cos.min() >= 0.9999


def test_unknown_backend_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECOMARINE_BACKEND", "tensorrt")
    with pytest.raises(ConfigError, match="ECOMARINE_BACKEND"):
        inference_backend()


class _Noisy(nn.Module):
    """A function ONNX Runtime cannot reproduce: fresh random numbers on every call."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x.mean(dim=(2, 3)) + torch.rand_like(x.mean(dim=(2, 3))),)


def test_a_session_that_disagrees_with_pytorch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECOMARINE_BACKEND", "onnxruntime")
    cache = FusedCache()
    owner = _Noisy()
    x = torch.randn(3, 3, 16, 16)
    with torch.inference_mode():
        for _ in range(2):  # eager, while the shape has not come back often enough
            assert cache.run("noisy", lambda: Traced(owner, owner.forward), x) is None
        with pytest.raises(ConfigError, match="disagrees with PyTorch"):
            cache.run("noisy", lambda: Traced(owner, owner.forward), x)
