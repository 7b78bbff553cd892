"""The embedded gate backend: ImageNet EfficientNet-Lite0 and a logistic head.

Two kinds of head features (``GateConfig.features``):

* ``"kinds_pooled"`` (shipped): the log probability mass of each ImageNet kind of photo
  (:mod:`ecomarine._imagenet_kinds`: cetacean, pinniped, boat, empty water, ...) and the
  backbone's 1,280 pooled features. The kinds carry what ImageNet already knows about
  look-alikes the gate was never fitted on; the pooled features separate what the kinds
  cannot (a shark from a dolphin).
* ``"log_probs"`` (format of earlier gates): the 1,000 ImageNet class log-probabilities.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ._device import conv_layout
from ._gate_base import FEATURES
from ._imagenet_kinds import kind_log_masses, looks_like
from .embedded import imagenet_parts
from .errors import ConfigError
from .identifier import build_identifier

__all__ = [
    "FEATURES",
    "GREY_WHALE",
    "KILLER_WHALE",
    "EmbeddedBackend",
    "fit_gate_head",
    "fit_kind_head",
    "head_features",
]

GREY_WHALE = 147
KILLER_WHALE = 148
_LOG_EPS = 1e-8


def head_features(pooled: torch.Tensor, logits: torch.Tensor, features: str) -> torch.Tensor:
    """The head's input from the backbone's pooled features and ImageNet logits."""
    if features == "log_probs":
        logp = torch.log_softmax(logits.float(), dim=1)
        return logp.clamp(min=float(torch.log(torch.tensor(_LOG_EPS))))
    if features == "kinds_pooled":
        return torch.cat([kind_log_masses(logits), pooled.float()], dim=1)
    raise ConfigError(f"gate features must be one of {sorted(FEATURES)}, got {features!r}")


class EmbeddedBackend(nn.Module):
    """Score = sigmoid(w . features + b), or the whale-class mass without a head.

    Args:
        weight: Logistic weights over the head features (see :data:`FEATURES`), or
            ``None`` to use the grey-whale + killer-whale probability mass.
        bias: Logistic bias.
        features: ``"kinds_pooled"`` or ``"log_probs"``.
    """

    name = "embedded"

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        bias: float = 0.0,
        features: str = "log_probs",
        kind_head: tuple[torch.Tensor, torch.Tensor, Sequence[str]] | None = None,
    ) -> None:
        super().__init__()
        if features not in FEATURES:
            raise ConfigError(f"gate features must be one of {sorted(FEATURES)}, got {features!r}")
        self.features = features
        self.model = build_identifier(imagenet_parts())
        self.head: nn.Linear | None = None
        if weight is not None:
            width = FEATURES[features]
            if weight.shape != (width,):
                raise ConfigError(
                    f"gate head weight for {features!r} must be ({width},), "
                    f"got {tuple(weight.shape)}"
                )
            self.head = nn.Linear(width, 1)
            with torch.no_grad():
                self.head.weight.copy_(weight.view(1, width))
                self.head.bias.fill_(float(bias))
        self.kind_head: nn.Linear | None = None
        self.kind_names: tuple[str, ...] = ()
        if kind_head is not None:
            self._set_kind_head(*kind_head)
        self.eval()

    def _set_kind_head(
        self, weight: torch.Tensor, bias: torch.Tensor, names: Sequence[str]
    ) -> None:
        width = FEATURES[self.features]
        if weight.ndim != 2 or weight.shape != (len(names), width) or bias.shape != (len(names),):
            raise ConfigError(
                f"looks-like head must be ({len(names)}, {width}) with ({len(names)},) bias for "
                f"{len(names)} kinds, got {tuple(weight.shape)} and {tuple(bias.shape)}"
            )
        self.kind_head = nn.Linear(width, len(names))
        with torch.no_grad():
            self.kind_head.weight.copy_(weight)
            self.kind_head.bias.copy_(bias)
        self.kind_names = tuple(names)

    @classmethod
    def from_tensors(
        cls,
        tensors: Mapping[str, torch.Tensor],
        where: str,
        features: str = "log_probs",
        kind_names: Sequence[str] = (),
    ) -> EmbeddedBackend:
        """Rebuild from :meth:`tensors` output (``kind_names`` name the looks-like head's rows)."""
        if not tensors:
            return cls(features=features)
        expected = {"head.weight", "head.bias"}
        if kind_names:
            expected |= {"kind_head.weight", "kind_head.bias"}
        if set(tensors) != expected:
            raise ConfigError(
                f"{where}: expected tensors {sorted(expected)}; got {sorted(tensors)}"
            )
        weight = tensors["head.weight"].flatten()
        if weight.shape != (FEATURES.get(features, -1),):
            raise ConfigError(
                f"{where}: head.weight has {weight.numel()} values; features {features!r} "
                f"need {FEATURES.get(features)}"
            )
        kinds = None
        if kind_names:
            kinds = (tensors["kind_head.weight"], tensors["kind_head.bias"], kind_names)
        try:
            return cls(weight, float(tensors["head.bias"].flatten()[0]), features, kinds)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc

    def backbone_outputs(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pooled (B, 1280), ImageNet logits (B, 1000))`` of a preprocessed batch."""
        x = conv_layout(batch, self.model.device)
        pooled, logits = self.model.imagenet_outputs(x)
        return pooled.float(), logits.float()

    def _scores(self, logits: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        # ``x``: the head features (None without a head: the whale-class mass scores).
        if self.head is None or x is None:
            p = torch.softmax(logits, dim=1)
            return p[:, GREY_WHALE] + p[:, KILLER_WHALE]
        return torch.sigmoid(self.head(x).squeeze(1))

    def _features(self, pooled: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        fitted = self.head if self.head is not None else self.kind_head
        if fitted is None:
            return None
        return head_features(pooled, logits, self.features).to(fitted.weight.dtype)

    def scores_from_outputs(self, pooled: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Scores from :meth:`backbone_outputs` (lets a fitting script cache them)."""
        return self._scores(logits, self._features(pooled, logits))

    def scores(self, batch: torch.Tensor) -> torch.Tensor:
        """``(B,)`` scores in [0, 1]."""
        return self.scores_from_outputs(*self.backbone_outputs(batch))

    def scores_and_looks_like(self, batch: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
        """Scores and the non-cetacean kind each photo most resembles (one forward pass).

        With a fitted looks-like head (:attr:`kind_names`), its most probable kind; without
        one, the most probable ImageNet kind (:func:`~ecomarine._imagenet_kinds.looks_like`).
        """
        pooled, logits = self.backbone_outputs(batch)
        x = self._features(pooled, logits)  # shared by both heads
        scores = self._scores(logits, x)
        if self.kind_head is None or x is None:
            return scores, looks_like(logits)
        best = self.kind_head(x).argmax(dim=1).tolist()
        return scores, [self.kind_names[i] for i in best]

    def tensors(self) -> dict[str, torch.Tensor]:
        """The logistic head (empty for the class-mass gate)."""
        if self.head is None:
            return {}
        out = {
            "head.weight": self.head.weight.detach().flatten(),
            "head.bias": self.head.bias.detach(),
        }
        if self.kind_head is not None:
            out["kind_head.weight"] = self.kind_head.weight.detach()
            out["kind_head.bias"] = self.kind_head.bias.detach()
        return out


def _standardized(
    x: torch.Tensor, standardize: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x scaled, mean, scale)``: flagged columns centred and scaled, others untouched."""
    if not bool(torch.isfinite(x).all()):
        raise ConfigError("gate features contain NaN or infinite values")
    mean = torch.zeros(x.shape[1], dtype=torch.float64)
    scale = torch.ones(x.shape[1], dtype=torch.float64)
    if standardize is not None:
        mean[standardize] = x[:, standardize].mean(0)
        scale[standardize] = x[:, standardize].std(0) + 1e-6
    return (x - mean) / scale, mean, scale


def _penalty(l2: float | torch.Tensor, width: int) -> torch.Tensor:
    penalty = torch.as_tensor(l2, dtype=torch.float64)
    if penalty.ndim not in (0, 1) or (penalty.ndim == 1 and penalty.shape[0] != width):
        raise ConfigError(f"l2 must be a number or one value per feature ({width})")
    return penalty


def _minimise(
    params: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], max_iter: int
) -> None:
    opt = torch.optim.LBFGS(params, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]


def fit_gate_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    sample_weight: torch.Tensor | None = None,
    standardize: torch.Tensor | None = None,
    l2: float | torch.Tensor = 1e-3,
    max_iter: int = 200,
) -> tuple[torch.Tensor, float]:
    """Fit the embedded gate's logistic head (L-BFGS, float64).

    The L2 penalty keeps the weights small so that ImageNet's semantics, not the quirks of
    a small training set, drive the decision. Columns flagged in ``standardize`` are
    centred and scaled before fitting (so one penalty suits features of any scale) and
    the scaling is folded back into the returned weights.

    Args:
        features: ``(N, D)`` head features (:func:`head_features`).
        labels: ``(N,)`` 1 for cetacean photos, 0 otherwise.
        sample_weight: ``(N,)`` non-negative weights (default: each class half the loss).
        standardize: ``(D,)`` bool, columns to standardise (default: none).
        l2: Weight of the L2 penalty (on the standardised scale): one number, or ``(D,)``
            per column (e.g. a light penalty on a few semantic features, a heavy one on
            many generic ones).
        max_iter: L-BFGS iterations.

    Returns:
        ``(weight (D,), bias)`` for the raw (unstandardised) features.

    Raises:
        ConfigError: Without both classes, with non-finite features or a malformed ``l2``.
    """
    y = labels.double()
    if not 0 < float(y.mean()) < 1:
        raise ConfigError("fitting the gate needs both cetacean and non-cetacean photos")
    xs, mean, scale = _standardized(features.double(), standardize)
    penalty = _penalty(l2, xs.shape[1])
    if sample_weight is None:
        sample_weight = torch.where(y > 0, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    w_s = sample_weight.double()
    w = torch.zeros(xs.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)

    def loss() -> torch.Tensor:
        bce = nn.functional.binary_cross_entropy_with_logits(xs @ w + b, y, reduction="none")
        return (w_s * bce).sum() / w_s.sum() + (penalty * w * w).sum()

    _minimise([w, b], loss, max_iter)
    weight = w.detach() / scale
    bias = float(b.detach()) - float((weight * mean).sum())
    return weight.float(), bias


def fit_kind_head(
    features: torch.Tensor,
    kinds: torch.Tensor,
    n_kinds: int,
    *,
    sample_weight: torch.Tensor | None = None,
    standardize: torch.Tensor | None = None,
    l2: float | torch.Tensor = 1e-3,
    max_iter: int = 200,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit the looks-like head: multinomial logistic regression over the same features.

    Args:
        features: ``(N, D)`` head features of non-cetacean photos.
        kinds: ``(N,)`` kind index of each photo, in ``[0, n_kinds)``.
        n_kinds: Number of kinds.
        sample_weight: ``(N,)`` non-negative weights (default: equal).
        standardize: As in :func:`fit_gate_head`.
        l2: As in :func:`fit_gate_head`.
        max_iter: L-BFGS iterations.

    Returns:
        ``(weight (n_kinds, D), bias (n_kinds,))`` for the raw features.

    Raises:
        ConfigError: With kinds out of range, non-finite features or a malformed ``l2``.
    """
    if kinds.numel() == 0 or int(kinds.min()) < 0 or int(kinds.max()) >= n_kinds:
        raise ConfigError(f"kind indices must be in [0, {n_kinds})")
    xs, mean, scale = _standardized(features.double(), standardize)
    penalty = _penalty(l2, xs.shape[1])
    w_s = torch.ones(len(kinds), dtype=torch.float64) if sample_weight is None else sample_weight
    w_s = w_s.double()
    w = torch.zeros(n_kinds, xs.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_kinds, dtype=torch.float64, requires_grad=True)

    def loss() -> torch.Tensor:
        ce = nn.functional.cross_entropy(xs @ w.T + b, kinds.long(), reduction="none")
        return (w_s * ce).sum() / w_s.sum() + (penalty * w * w).sum()

    _minimise([w, b], loss, max_iter)
    weight = w.detach() / scale
    bias = b.detach() - weight @ mean
    return weight.float(), bias.float()
