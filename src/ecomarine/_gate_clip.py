"""The OpenCLIP gate backend (optional extra ``clip``).

open_clip is imported only when this backend is used. The prompts' text embeddings are
computed once and saved with the gate; a saved gate loads only the image tower.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from . import hub
from ._clip_tower import import_open_clip
from ._gate_base import GateConfig
from .config import PreprocessConfig
from .errors import ConfigError, WeightsNotFoundError

__all__ = ["ClipBackend", "build_clip_backend"]

logger = logging.getLogger(__name__)

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _open_clip() -> Any:
    return import_open_clip("the CLIP gate")


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)


def _create_model(model_name: str, pretrained: str | None, cache_dir: str | None) -> Any:
    open_clip = _open_clip()
    try:
        # open_clip logs its own error on the root logger before raising (offline, say);
        # the exception below says it once, on the CLI's one line.
        with _quiet_root_logger():
            return open_clip.create_model(model_name, pretrained=pretrained, cache_dir=cache_dir)
    except RuntimeError as exc:
        raise ConfigError(f"open_clip cannot build {model_name!r}: {exc}") from exc
    except Exception as exc:  # Hub and network errors surface with many types
        raise WeightsNotFoundError(
            f"cannot load CLIP weights {model_name!r}/{pretrained!r} ({type(exc).__name__}: "
            f'{exc}); use Gate.from_pretrained("embedded") offline'
        ) from exc


class ClipBackend(nn.Module):
    """Zero-shot scoring: softmax over prompt similarities, mass on the positive prompts.

    Args:
        model: An open_clip model (only its image tower is used after construction).
        text_features: ``(P + N, D)`` unit-norm prompt embeddings, positives first.
        n_positive: Number of positive prompts.
        logit_scale: Temperature of the softmax (CLIP's learnt scale, about 100).
    """

    name = "clip"

    def __init__(
        self, model: Any, text_features: torch.Tensor, n_positive: int, logit_scale: float
    ) -> None:
        super().__init__()
        if not 0 < n_positive < text_features.shape[0]:
            raise ConfigError("need at least one positive and one negative prompt")
        self.visual: nn.Module = model.visual
        self.text_features: torch.Tensor
        self.register_buffer("text_features", F.normalize(text_features.float(), dim=1))
        #: Custom (non-published) image towers are saved with the gate.
        self.save_visual = False
        self.n_positive = n_positive
        self.logit_scale = float(logit_scale)
        #: The negative prompts' texts, for :meth:`scores_and_looks_like` (set by the builders).
        self.negative_prompts: tuple[str, ...] = ()
        self.eval()

    def _probs(self, batch: torch.Tensor) -> torch.Tensor:
        feats = F.normalize(self.visual(batch.to(self.text_features.device)).float(), dim=1)
        return torch.softmax(self.logit_scale * feats @ self.text_features.T, dim=1)

    def scores(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B,)`` positive-prompt probability mass."""
        return self._probs(batch)[:, : self.n_positive].sum(dim=1)

    def scores_and_looks_like(self, batch: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        """Scores and the best-matching negative prompt of each photo (e.g. "a photo of a seal")."""
        probs = self._probs(batch)
        best = probs[:, self.n_positive :].argmax(dim=1).tolist()
        names = self.negative_prompts
        kinds = [names[i] if i < len(names) else f"negative prompt {i}" for i in best]
        return probs[:, : self.n_positive].sum(dim=1), kinds

    def tensors(self) -> dict[str, torch.Tensor]:
        """Prompt embeddings and scale, plus the image tower when it is not a published one."""
        out = {
            "text_features": self.text_features,
            "logit_scale": torch.tensor([self.logit_scale]),
            "n_positive": torch.tensor([self.n_positive]),
        }
        if self.save_visual:
            out.update({f"visual.{k}": v for k, v in self.visual.state_dict().items()})
        return out

    @classmethod
    def build(
        cls,
        model_name: str,
        pretrained: str | None,
        positive: Sequence[str],
        negative: Sequence[str],
        *,
        cache_dir: str | None = None,
    ) -> tuple[ClipBackend, PreprocessConfig]:
        """Create the model and embed the prompts once."""
        open_clip = _open_clip()
        model = _create_model(model_name, pretrained, cache_dir).eval()
        tokenizer = open_clip.get_tokenizer(model_name)
        with torch.inference_mode():
            text = model.encode_text(tokenizer(list(positive) + list(negative)))
        backend = cls(model, text.clone(), len(positive), float(model.logit_scale.detach().exp()))
        backend.save_visual = pretrained is None  # random/custom towers must travel with it
        backend.negative_prompts = tuple(negative)
        return backend, _preprocess_of(model)

    @classmethod
    def from_config(
        cls,
        config: GateConfig,
        tensors: Mapping[str, torch.Tensor],
        location: hub.HubLocation | None,
    ) -> ClipBackend:
        """Rebuild a saved CLIP gate without running the text encoder."""
        if config.clip_model is None:
            raise ConfigError("gate.json: a CLIP gate needs clip_model")
        for key in ("text_features", "logit_scale", "n_positive"):
            if key not in tensors:
                raise ConfigError(f"gate.safetensors: missing tensor {key!r}")
        cache = None if location is None or location.cache_dir is None else str(location.cache_dir)
        model = _create_model(config.clip_model, config.clip_pretrained, cache)
        visual = {k[len("visual.") :]: v for k, v in tensors.items() if k.startswith("visual.")}
        if visual:
            missing, unexpected = model.visual.load_state_dict(visual, strict=False)
            if missing or unexpected:
                raise ConfigError(
                    f"gate.safetensors: image tower mismatch: missing {missing[:5]}, "
                    f"unexpected {unexpected[:5]}"
                )
        elif config.clip_pretrained is None:
            raise ConfigError("gate.safetensors: a custom CLIP gate must include its image tower")
        backend = cls(
            model,
            tensors["text_features"],
            int(tensors["n_positive"].item()),
            float(tensors["logit_scale"].item()),
        )
        backend.save_visual = bool(visual)
        backend.negative_prompts = config.negative_prompts
        return backend


def _preprocess_of(model: Any) -> PreprocessConfig:
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = cfg.get("size", getattr(model.visual, "image_size", 224))
    if isinstance(size, int):
        size = (size, size)
    return PreprocessConfig(
        input_size=(int(size[0]), int(size[1])),
        mean=tuple(cfg.get("mean", _OPENAI_MEAN)),
        std=tuple(cfg.get("std", _OPENAI_STD)),
        interpolation="bicubic",
    )


def build_clip_backend(
    model_name: str,
    pretrained: str | None,
    positive: Sequence[str],
    negative: Sequence[str],
    *,
    threshold: float = 0.5,
    cache_dir: str | None = None,
) -> tuple[ClipBackend, GateConfig]:
    """A CLIP backend and its gate config (downloads the model lazily via open_clip)."""
    pos, neg = tuple(positive), tuple(negative)
    if not pos or not neg:
        raise ConfigError("the CLIP gate needs at least one positive and one negative prompt")
    backend, pp = ClipBackend.build(model_name, pretrained, pos, neg, cache_dir=cache_dir)
    config = GateConfig(
        backend="clip",
        threshold=threshold,
        preprocess=pp,
        clip_model=model_name,
        clip_pretrained=pretrained,
        positive_prompts=pos,
        negative_prompts=neg,
    )
    return backend, config
