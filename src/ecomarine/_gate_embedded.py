"""The embedded gate backend: ImageNet EfficientNet-Lite0 and a logistic head."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ._device import conv_layout
from .embedded import imagenet_parts
from .errors import ConfigError
from .identifier import build_identifier

__all__ = ["GREY_WHALE", "KILLER_WHALE", "EmbeddedBackend", "fit_logistic_head"]

GREY_WHALE = 147
KILLER_WHALE = 148
_LOG_EPS = 1e-8


class EmbeddedBackend(nn.Module):
    """Score = sigmoid(w . log p(ImageNet classes) + b), or the whale-class mass.

    Args:
        weight: ``(1000,)`` logistic weights over log class probabilities, or ``None`` to
            use the grey-whale + killer-whale probability mass.
        bias: Logistic bias.
    """

    name = "embedded"

    def __init__(self, weight: torch.Tensor | None = None, bias: float = 0.0) -> None:
        super().__init__()
        self.model = build_identifier(imagenet_parts())
        self.head: nn.Linear | None = None
        if weight is not None:
            if weight.shape != (1000,):
                raise ConfigError(f"gate head weight must be (1000,), got {tuple(weight.shape)}")
            self.head = nn.Linear(1000, 1)
            with torch.no_grad():
                self.head.weight.copy_(weight.view(1, 1000))
                self.head.bias.fill_(float(bias))
        self.eval()

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], where: str) -> EmbeddedBackend:
        """Rebuild from :meth:`tensors` output."""
        if not tensors:
            return cls()
        if set(tensors) != {"head.weight", "head.bias"}:
            raise ConfigError(
                f"{where}: expected tensors head.weight, head.bias; got {sorted(tensors)}"
            )
        return cls(tensors["head.weight"].flatten(), float(tensors["head.bias"].flatten()[0]))

    def log_probs(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B, 1000)`` ImageNet log-probabilities."""
        x = conv_layout(batch, self.model.device)
        return torch.log_softmax(self.model.imagenet_logits(x).float(), dim=1)

    def scores_from_log_probs(self, logp: torch.Tensor) -> torch.Tensor:
        """Scores from precomputed log-probabilities."""
        if self.head is None:
            p = logp.exp()
            return p[:, GREY_WHALE] + p[:, KILLER_WHALE]
        return torch.sigmoid(
            self.head(logp.clamp(min=torch.log(torch.tensor(_LOG_EPS)))).squeeze(1)
        )

    def scores(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B,)`` scores in [0, 1]."""
        return self.scores_from_log_probs(self.log_probs(batch))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The logistic head (empty for the class-mass gate)."""
        if self.head is None:
            return {}
        return {
            "head.weight": self.head.weight.detach().flatten(),
            "head.bias": self.head.bias.detach(),
        }


def fit_logistic_head(
    log_probs: torch.Tensor, labels: torch.Tensor, *, l2: float = 1e-3, max_iter: int = 500
) -> tuple[torch.Tensor, float]:
    """Fit the embedded gate's logistic head on ImageNet log-probabilities.

    Classes are balanced (each carries half the loss), and an L2 penalty keeps the
    weights small so that the ImageNet semantics, not the quirks of a small training
    set, drive the decision.

    Args:
        log_probs: ``(N, 1000)`` from :meth:`EmbeddedBackend.log_probs`.
        labels: ``(N,)`` 1 for cetacean photos, 0 otherwise.
        l2: Weight of the L2 penalty.
        max_iter: L-BFGS iterations.

    Returns:
        ``(weight (1000,), bias)``.
    """
    x = log_probs.double().clamp(min=float(torch.log(torch.tensor(_LOG_EPS))))
    y = labels.double()
    if not 0 < float(y.mean()) < 1:
        raise ConfigError("fitting the gate needs both cetacean and non-cetacean photos")
    sample_w = torch.where(y > 0, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        z = x @ w + b
        bce = torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none")
        loss = (sample_w * bce).mean() + l2 * (w * w).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    return w.detach().float(), float(b.detach())
