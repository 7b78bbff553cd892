"""What every gate backend shares: the gate's config (``gate.json``) and the backend protocol.

Kept apart from :mod:`ecomarine.gate` so that the backends (and the loading factory) can
use them without importing the :class:`~ecomarine.gate.Gate` they are assembled into.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ._imagenet_kinds import KIND_NAMES
from .config import PreprocessConfig
from .errors import ConfigError

__all__ = [
    "DEFAULT_NEGATIVE_PROMPTS",
    "DEFAULT_POSITIVE_PROMPTS",
    "EMBEDDED_GATE_DIR",
    "FEATURES",
    "GATE_CONFIG",
    "GATE_WEIGHTS",
    "GateBackend",
    "GateConfig",
]

GATE_FORMAT_VERSION = 1
GATE_CONFIG = "gate.json"
GATE_WEIGHTS = "gate.safetensors"
_POOLED = 1280  # EfficientNet-Lite0's pooled features
#: The embedded head's feature kinds (``GateConfig.features``) and their widths.
FEATURES: dict[str, int] = {"log_probs": 1000, "kinds_pooled": len(KIND_NAMES) + _POOLED}
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
    # The marine look-alikes (issue: a gate that holds at sea).
    "a photo of a seal",
    "a photo of a sea lion",
    "a photo of a sea otter",
    "a photo of a walrus",
    "a photo of seals on a beach",
    "an aerial photo of empty sea",
    "a photo of waves on the sea",
    "a photo of the sea surface with no animals",
    "a photo of rocks and kelp",
    "a photo of a rocky shore",
    "a photo of a boat seen from above",
    "a photo of a ship at sea",
    "a photo of a seabird",
    "a photo of a diver underwater",
    "a photo of fish on a coral reef",
    "a photo of a manatee",
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
        features: The embedded head's input: ``"kinds_pooled"`` (ImageNet kinds of photo
            and pooled features; the shipped gate) or ``"log_probs"`` (the 1,000 class
            log-probabilities; gates saved before it, which lack the key).
        looks_like_kinds: Names of the embedded gate's looks-like head rows (what a
            rejected photo is said to look like); empty without such a head.
    """

    backend: str = "embedded"
    threshold: float = 0.5
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    clip_model: str | None = None
    clip_pretrained: str | None = None
    positive_prompts: tuple[str, ...] = DEFAULT_POSITIVE_PROMPTS
    negative_prompts: tuple[str, ...] = DEFAULT_NEGATIVE_PROMPTS
    calibration: dict[str, Any] | None = None
    features: str = "log_probs"
    looks_like_kinds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.backend not in ("embedded", "clip"):
            raise ConfigError(f"gate backend must be 'embedded' or 'clip', got {self.backend!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"gate threshold must be in [0, 1], got {self.threshold}")
        if self.features not in FEATURES:
            raise ConfigError(
                f"gate features must be one of {sorted(FEATURES)}, got {self.features!r}"
            )
        if self.backend == "clip" and (not self.positive_prompts or not self.negative_prompts):
            raise ConfigError("the CLIP gate needs positive and negative prompts")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready content of ``gate.json``."""
        data = asdict(self)
        data["preprocess"] = self.preprocess.to_dict()
        data["positive_prompts"] = list(self.positive_prompts)
        data["negative_prompts"] = list(self.negative_prompts)
        data["looks_like_kinds"] = list(self.looks_like_kinds)
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
            for key in ("positive_prompts", "negative_prompts", "looks_like_kinds"):
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
