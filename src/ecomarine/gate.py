"""The :class:`Gate`: is this a cetacean photo at all?

Two backends share one interface (a batch of preprocessed images in, scores in [0, 1]
out):

* ``embedded`` (offline, bundled): the ImageNet EfficientNet-Lite0 of the embedded
  identifier with a small logistic head over its 1,000 class log-probabilities, fitted
  by ``benchmarks/gate_fit.py`` (see the docs for its leave-one-group-out figures). Without
  a fitted head it falls back to the grey-whale + killer-whale class mass.
* ``clip`` (optional extra): OpenCLIP zero-shot with positive and negative prompt sets;
  the score is the softmax mass on the positive prompts. Text embeddings are computed
  once and saved with the gate, so loading needs no text-encoder pass.

The threshold is calibrated (:meth:`Gate.calibrate`) and saved with the gate.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from . import hub
from ._atomic import atomic_write_bytes, atomic_write_text
from ._device import resolve_device
from .calibration import BinaryCalibration, calibrate_binary
from .config import PreprocessConfig, read_json
from .errors import ConfigError
from .io import ImageSource
from .transforms import default_workers, load_batch
from .types import GateResult

__all__ = [
    "DEFAULT_NEGATIVE_PROMPTS",
    "DEFAULT_POSITIVE_PROMPTS",
    "Gate",
    "GateBackend",
    "GateConfig",
]

logger = logging.getLogger(__name__)

GATE_FORMAT_VERSION = 1
GATE_CONFIG = "gate.json"
GATE_WEIGHTS = "gate.safetensors"
EMBEDDED_GATE_DIR = Path(__file__).resolve().parent / "weights" / "gate-embedded"

DEFAULT_POSITIVE_PROMPTS = (
    "a photo of a whale in the ocean",
    "an aerial photo of a whale",
    "a photo of a humpback whale",
    "a photo of a blue whale",
    "a photo of a killer whale",
    "a photo of a dolphin swimming",
    "a photo of a beluga whale",
    "a photo of a marine mammal in the sea",
    "a photo of a whale fluke or dorsal fin",
    "a photograph of a cetacean",
)
DEFAULT_NEGATIVE_PROMPTS = (
    "a photo of text on a blank page",
    "a screenshot of a document",
    "a photo of a person",
    "a photo of a building",
    "a photo of a car",
    "a photo of a cat",
    "a photo of a dog",
    "a photo of food",
    "a photo of a landscape without animals",
    "a blank white image",
    "a photo of a fish",
    "a photo of a boat on water",
    "a photo of a shark",
    "an abstract pattern",
)


@dataclass(frozen=True)
class GateConfig:
    """What a gate needs besides tensors; saved as ``gate.json``.

    Attributes:
        backend: ``"embedded"`` or ``"clip"``.
        threshold: Scores at or above it are cetacean photos.
        preprocess: Input size and normalisation of the backend's image model.
        clip_model: open_clip architecture name (``clip`` only).
        clip_pretrained: open_clip pretrained tag or Hub id (``clip`` only).
        positive_prompts: Prompts describing cetacean photos (``clip`` only).
        negative_prompts: Prompts describing everything else (``clip`` only).
        calibration: The last calibration report, if any.
    """

    backend: str = "embedded"
    threshold: float = 0.5
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    clip_model: str | None = None
    clip_pretrained: str | None = None
    positive_prompts: tuple[str, ...] = DEFAULT_POSITIVE_PROMPTS
    negative_prompts: tuple[str, ...] = DEFAULT_NEGATIVE_PROMPTS
    calibration: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("embedded", "clip"):
            raise ConfigError(f"gate backend must be 'embedded' or 'clip', got {self.backend!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"gate threshold must be in [0, 1], got {self.threshold}")
        if self.backend == "clip" and (not self.positive_prompts or not self.negative_prompts):
            raise ConfigError("the CLIP gate needs positive and negative prompts")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready content of ``gate.json``."""
        data = asdict(self)
        data["preprocess"] = self.preprocess.to_dict()
        data["positive_prompts"] = list(self.positive_prompts)
        data["negative_prompts"] = list(self.negative_prompts)
        return {"format_version": GATE_FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = GATE_CONFIG) -> GateConfig:
        """Validate and build from ``gate.json`` content."""
        if not isinstance(data, dict) or data.get("format_version") != GATE_FORMAT_VERSION:
            raise ConfigError(f"{where}: unsupported or missing format_version")
        body = {k: v for k, v in data.items() if k != "format_version"}
        unknown = set(body) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}")
        try:
            if "preprocess" in body:
                body["preprocess"] = PreprocessConfig.from_dict(body["preprocess"])
            for key in ("positive_prompts", "negative_prompts"):
                if key in body:
                    body[key] = tuple(str(p) for p in body[key])
            if "threshold" in body:
                body["threshold"] = float(body["threshold"])
            return cls(**body)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{where}: {exc}") from exc


class GateBackend(Protocol):
    """Scores a preprocessed batch; all backends are ``nn.Module``-like."""

    name: str

    def scores(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B,)`` scores in [0, 1] for a ``(B, 3, H, W)`` batch."""
        ...

    def tensors(self) -> dict[str, torch.Tensor]:
        """Tensors to save with the gate (beyond any pretrained image model)."""
        ...

    def to(self, device: torch.device) -> Any:
        """Move to a device."""
        ...


class Gate:
    """Zero-shot / small-head gate that rejects non-cetacean photos.

    Args:
        backend: A backend object (see :class:`GateBackend`).
        config: The gate's config (threshold, preprocessing, prompts).
    """

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

    def results(self, scores: np.ndarray[Any, Any]) -> list[GateResult]:
        """Turn raw scores into :class:`GateResult` objects at the current threshold."""
        thr = self.threshold
        return [GateResult(float(s), bool(s >= thr), thr, self.name) for s in scores.tolist()]

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
        for start in range(0, len(sources), batch_size):
            batch = load_batch(sources[start : start + batch_size], self.config.preprocess, workers)
            scores.append(self.score_tensor(batch))
        return self.results(np.concatenate(scores) if scores else np.zeros(0, np.float32))

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
            self.config = GateConfig(
                **{
                    **{k: getattr(self.config, k) for k in self.config.__dataclass_fields__},
                    "threshold": report.threshold,
                    "calibration": report.to_dict(),
                }
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
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str] = "embedded",
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        device: str | torch.device | None = None,
    ) -> Gate:
        """Load ``"embedded"``, a folder written by :meth:`save_pretrained`, or a Hub repo.

        Raises:
            WeightsNotFoundError: Missing files or an offline cache miss.
            ConfigError: An invalid ``gate.json``.
        """
        if os.fspath(name_or_path) == "embedded":
            location = hub.HubLocation(local_dir=EMBEDDED_GATE_DIR)
            if not (EMBEDDED_GATE_DIR / GATE_CONFIG).is_file():
                from ._gate_embedded import imagenet_class_gate  # noqa: PLC0415

                return imagenet_class_gate().to(device)
        else:
            location = hub.parse_location(
                name_or_path,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                token=token,
            )
        config_path = hub.require_file(location, GATE_CONFIG)
        weights_path = hub.require_file(location, GATE_WEIGHTS)
        config = GateConfig.from_dict(read_json(config_path), where=str(config_path))
        try:
            tensors = load_safetensors(weights_path.read_bytes())
        except Exception as exc:  # safetensors' own error types
            raise ConfigError(f"{weights_path}: unreadable safetensors file ({exc})") from exc
        backend: GateBackend
        if config.backend == "clip":
            from ._gate_clip import ClipBackend  # noqa: PLC0415

            backend = ClipBackend.from_config(config, tensors, location)
        else:
            from ._gate_embedded import EmbeddedBackend  # noqa: PLC0415

            backend = EmbeddedBackend.from_tensors(tensors, str(weights_path))
        return cls(backend, config).to(device)


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
