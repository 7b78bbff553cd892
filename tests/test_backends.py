"""The ONNX Runtime and OpenVINO backends of the fused path: PyTorch's answers, or a refusal."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ecomarine import ConfigError, Identifier, Pipeline
from ecomarine._fuse import _RUNTIMES, FusedCache, Traced, inference_backend

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the exporter's own

RUNTIMES = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(
            importlib.util.find_spec(name) is None, reason=f"{name} not installed"
        ),
    )
    for name in _RUNTIMES
]


@pytest.mark.parametrize("backend", RUNTIMES)
def test_runtime_embeddings_equal_eager(
    backend: str, monkeypatch: pytest.MonkeyPatch, examples_dir: Path
) -> None:
    photos = sorted((examples_dir / "belugas" / "queries").glob("*.jpg"))[:6]
    ident = Identifier.from_pretrained("embedded")
    monkeypatch.setenv("ECOMARINE_FUSE", "0")
    eager = ident.embed(photos, batch_size=6)
    monkeypatch.setenv("ECOMARINE_FUSE", "1")
    monkeypatch.setenv("ECOMARINE_BACKEND", backend)
    assert inference_backend() == backend
    for _ in range(3):  # the session is built once a shape has come back
        fused = ident.embed(photos, batch_size=6)
    graphs = list(ident.fused._graphs.values())
    assert any(isinstance(g, _RUNTIMES[backend]) for g in graphs)
    cos = np.sum(eager * fused, axis=1)
    assert cos.min() >= 0.9999


@pytest.mark.parametrize("backend", RUNTIMES)
def test_pipeline_on_a_runtime_answers_as_pytorch(
    backend: str, monkeypatch: pytest.MonkeyPatch, examples_dir: Path
) -> None:
    # Gate and identifier both on the runtime, through predict_many's batches.
    photos = sorted((examples_dir / "belugas" / "queries").glob("*.jpg"))[:5]
    pipe = Pipeline.from_pretrained("embedded", device="cpu")
    monkeypatch.setenv("ECOMARINE_FUSE", "0")
    eager = list(pipe.predict_many(photos, batch_size=5))
    monkeypatch.setenv("ECOMARINE_FUSE", "1")
    monkeypatch.setenv("ECOMARINE_BACKEND", backend)
    for _ in range(3):
        fused = list(pipe.predict_many(photos, batch_size=5))
    for model in (pipe.identifier, pipe.gate.backend.model):  # type: ignore[union-attr]
        assert any(isinstance(g, _RUNTIMES[backend]) for g in model.fused._graphs.values())
    for a, b in zip(eager, fused, strict=True):
        assert a.gate_score == pytest.approx(b.gate_score, abs=1e-4)
        assert a.species == b.species
        assert [m.individual_id for m in a.candidates] == [m.individual_id for m in b.candidates]
        for ma, mb in zip(a.candidates, b.candidates, strict=True):
            assert ma.score == pytest.approx(mb.score, abs=1e-4)


def test_unknown_backend_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECOMARINE_BACKEND", "tensorrt")
    with pytest.raises(ConfigError, match="ECOMARINE_BACKEND"):
        inference_backend()


class _Noisy(nn.Module):
    """A function no runtime can reproduce: fresh random numbers on every call."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x.mean(dim=(2, 3)) + torch.rand_like(x.mean(dim=(2, 3))),)


@pytest.mark.parametrize("backend", RUNTIMES)
def test_a_session_that_disagrees_with_pytorch_is_refused(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ECOMARINE_BACKEND", backend)
    cache = FusedCache()
    owner = _Noisy()
    x = torch.randn(3, 3, 16, 16)
    with torch.inference_mode():
        for _ in range(2):  # eager, while the shape has not come back often enough
            assert cache.run("noisy", lambda: Traced(owner, owner.forward), x) is None
        with pytest.raises(ConfigError, match="disagrees with PyTorch"):
            cache.run("noisy", lambda: Traced(owner, owner.forward), x)


@pytest.mark.parametrize(("backend", "extra"), [("onnxruntime", "onnx"), ("openvino", "openvino")])
def test_a_missing_runtime_names_its_extra(
    backend: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.import_module

    def without(name: str, *args: object) -> object:
        if name == backend:
            raise ImportError(f"No module named {name!r}")
        return real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib, "import_module", without)
    monkeypatch.setenv("ECOMARINE_BACKEND", backend)
    with pytest.raises(ConfigError, match=rf"ecomarine\[{extra}\]"):
        inference_backend()
