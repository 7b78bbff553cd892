"""The :class:`Gate`: is this a cetacean photo at all?

Two backends share one interface (a batch of preprocessed images in, scores in [0, 1]
out):

* ``embedded`` (offline, bundled): the ImageNet EfficientNet-Lite0 of the embedded
  identifier with a small logistic head over ImageNet's kinds of photo and the pooled
  features (gates saved earlier: over the 1,000 class log-probabilities), and a
  looks-like head, fitted by ``benchmarks/gate_fit.py`` (see the docs for its held-out
  figures). Without a fitted head it falls back to the grey-whale + killer-whale class
  mass.
* ``clip`` (optional extra): OpenCLIP zero-shot with positive and negative prompt sets;
  the score is the softmax mass on the positive prompts. Text embeddings are computed
  once and saved with the gate, so loading needs no text-encoder pass.

The threshold is calibrated (:meth:`Gate.calibrate`) and saved with the gate.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as save_safetensors

from ._atomic import atomic_write_bytes, atomic_write_text
from ._device import resolve_device
from ._gate_base import (
    DEFAULT_NEGATIVE_PROMPTS,
    DEFAULT_POSITIVE_PROMPTS,
    EMBEDDED_GATE_DIR,
    GATE_CONFIG,
    GATE_WEIGHTS,
    GateBackend,
    GateConfig,
)
from ._parts import GateParts
from ._pretrained import LoadRequest, PretrainedMixin
from .calibration import BinaryCalibration, calibrate_binary
from .errors import ConfigError
from .factory import gate_parts
from .io import ImageSource
from .transforms import default_workers, load_batch
from .types import GateResult

__all__ = [
    "DEFAULT_NEGATIVE_PROMPTS",
    "DEFAULT_POSITIVE_PROMPTS",
    "EMBEDDED_GATE_DIR",
    "Gate",
    "GateBackend",
    "GateConfig",
    "build_gate",
    "clip_gate",
]

logger = logging.getLogger(__name__)


class Gate(PretrainedMixin):
    """Zero-shot / small-head gate that rejects non-cetacean photos.

    ``Gate.from_pretrained(name_or_path)`` loads ``"embedded"`` (the bundled fitted gate),
    a folder written by :meth:`save_pretrained`, or a Hub repository (see
    :meth:`~ecomarine._pretrained.PretrainedMixin.from_pretrained` for the Hub keywords);
    :meth:`push_to_hub` uploads one.

    Args:
        backend: A backend object (see :class:`GateBackend`).
        config: The gate's config (threshold, preprocessing, prompts).
    """

    push_message = "Upload ecomarine gate"

    def __init__(self, backend: GateBackend, config: GateConfig) -> None:
        self.backend = backend
        self.config = config

    @property
    def threshold(self) -> float:
        """The decision threshold."""
        return self.config.threshold

    @property
    def name(self) -> str:
        """Backend name (``"embedded"`` or ``"clip"``)."""
        return self.backend.name

    def score_tensor(self, batch: torch.Tensor) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Scores of a preprocessed batch (see :attr:`config.preprocess`)."""
        with torch.inference_mode():
            return self.backend.scores(batch).float().cpu().numpy()

    def assess_tensor(
        self, batch: torch.Tensor
    ) -> tuple[np.ndarray[Any, np.dtype[np.float32]], list[str | None]]:
        """Scores of a preprocessed batch and what each photo most looks like.

        ``looks_like`` names the non-cetacean kind a photo most resembles (e.g.
        ``"pinniped"``, ``"boat"``, ``"empty_water"``), or ``None`` for a backend that
        cannot tell.
        """
        with torch.inference_mode():
            both = getattr(self.backend, "scores_and_looks_like", None)
            if both is None:
                scores = self.backend.scores(batch)
                return scores.float().cpu().numpy(), [None] * int(scores.shape[0])
            scores, kinds = both(batch)
            return scores.float().cpu().numpy(), list(kinds)

    def results(
        self, scores: np.ndarray[Any, Any], looks_like: Sequence[str | None] | None = None
    ) -> list[GateResult]:
        """Turn raw scores into :class:`GateResult` objects at the current threshold.

        ``looks_like`` is kept for rejected photos only (an accepted one is a cetacean).
        """
        thr = self.threshold
        kinds = [None] * len(scores) if looks_like is None else list(looks_like)
        return [
            GateResult(float(s), bool(s >= thr), thr, self.name, None if s >= thr else k)
            for s, k in zip(scores.tolist(), kinds, strict=True)
        ]

    def score(
        self,
        images: Sequence[ImageSource],
        *,
        batch_size: int = 32,
        num_workers: int | None = None,
    ) -> list[GateResult]:
        """Score photos.

        Raises:
            InvalidImageError: If an image cannot be read.
        """
        sources = list(images)
        workers = default_workers() if num_workers is None else max(1, num_workers)
        scores = []
        kinds: list[str | None] = []
        for start in range(0, len(sources), batch_size):
            batch = load_batch(sources[start : start + batch_size], self.config.preprocess, workers)
            s, k = self.assess_tensor(batch)
            scores.append(s)
            kinds += k
        return self.results(np.concatenate(scores) if scores else np.zeros(0, np.float32), kinds)

    def calibrate(
        self,
        positives: Sequence[ImageSource] | np.ndarray[Any, Any],
        negatives: Sequence[ImageSource] | np.ndarray[Any, Any],
        *,
        min_tpr: float = 0.85,
        min_tnr: float = 0.90,
        apply: bool = True,
    ) -> BinaryCalibration:
        """Sweep thresholds on labelled photos (or precomputed score arrays).

        Picks the smallest threshold meeting both targets, or the best balanced one
        (the report says which). With ``apply`` the threshold is stored in the config.
        """
        pos = _as_scores(self, positives)
        neg = _as_scores(self, negatives)
        report = calibrate_binary(pos, neg, min_tpr=min_tpr, min_tnr=min_tnr)
        if apply:
            self.config = dataclasses.replace(
                self.config, threshold=report.threshold, calibration=report.to_dict()
            )
        return report

    def to(self, device: str | torch.device | None = None) -> Gate:
        """Move the backend to a device (default: the best available)."""
        self.backend.to(resolve_device(device))
        return self

    # --- persistence --------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> Path:
        """Write ``gate.json`` and ``gate.safetensors`` (atomically)."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.backend.tensors().items()}
        atomic_write_bytes(folder / GATE_WEIGHTS, save_safetensors(tensors))
        atomic_write_text(folder / GATE_CONFIG, json.dumps(self.config.to_dict(), indent=2) + "\n")
        return folder

    @classmethod
    def _from_source(cls, request: LoadRequest) -> Gate:
        return build_gate(gate_parts(request.source())).to(request.device)


def build_gate(parts: GateParts) -> Gate:
    """The gate of some parts: the backend its config names, rebuilt from its tensors.

    Raises:
        ConfigError: Tensors that do not fit the backend (named).
        WeightsNotFoundError: A CLIP model that cannot be had (offline).
    """
    bad = [
        k
        for k, t in parts.tensors.items()
        if t.is_floating_point() and not bool(t.isfinite().all())
    ]
    if bad:
        raise ConfigError(f"{parts.where}: gate tensors contain NaN or infinite values: {bad[:5]}")
    backend: GateBackend
    if parts.config.backend == "clip":
        from ._gate_clip import ClipBackend  # noqa: PLC0415 - optional dependency open_clip

        backend = ClipBackend.from_config(parts.config, parts.tensors, parts.location)
    else:
        from ._gate_embedded import EmbeddedBackend  # noqa: PLC0415 - builds a network

        backend = EmbeddedBackend.from_tensors(
            parts.tensors, parts.where, parts.config.features, parts.config.looks_like_kinds
        )
    return Gate(backend, parts.config)


def clip_gate(
    model_name: str = "ViT-B-32",
    pretrained: str | None = "laion2b_s34b_b79k",
    *,
    positive: Sequence[str] | None = None,
    negative: Sequence[str] | None = None,
    threshold: float = 0.5,
    cache_dir: str | None = None,
) -> Gate:
    """A CLIP gate (optional extra ``clip``; downloads the model lazily via open_clip).

    Args:
        model_name: open_clip architecture.
        pretrained: open_clip pretrained tag or Hub id (``None``: random weights, which
            are then saved with the gate).
        positive: Prompts describing cetacean photos (default: the published ones).
        negative: Prompts describing everything else.
        threshold: Decision threshold (calibrate it: :meth:`Gate.calibrate`).
        cache_dir: open_clip's download cache.

    Raises:
        ConfigError: Without open_clip, or without prompts on either side.
    """
    from ._gate_clip import build_clip_backend  # noqa: PLC0415 - optional dependency open_clip

    backend, config = build_clip_backend(
        model_name,
        pretrained,
        DEFAULT_POSITIVE_PROMPTS if positive is None else positive,
        DEFAULT_NEGATIVE_PROMPTS if negative is None else negative,
        threshold=threshold,
        cache_dir=cache_dir,
    )
    return Gate(backend, config)


def _as_scores(
    gate: Gate, items: Sequence[ImageSource] | np.ndarray[Any, Any]
) -> np.ndarray[Any, Any]:
    if (
        isinstance(items, np.ndarray)
        and items.ndim == 1
        and np.issubdtype(items.dtype, np.floating)
    ):
        return items
    return np.array([r.score for r in gate.score(list(items))], dtype=np.float64)
