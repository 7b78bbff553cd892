"""Metric-learning heads and pooling: ArcFace, sub-centre ArcFace, dynamic margins, GeM.

Margins are in radians everywhere. The heads return *scaled cosine logits*; pass them to
``torch.nn.functional.cross_entropy`` during training. Without labels they return
plain scaled cosines (no margin), which is what inference uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import Tensor, nn

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import HeadConfig

__all__ = [
    "ArcMarginProduct",
    "GeM",
    "SubCenterArcMarginProduct",
    "build_head",
    "dynamic_margins",
]

# Keep sqrt(1 - cos^2) differentiable at cos = +-1 (its derivative is infinite there).
_SINE_EPS = 1e-12


def _check_margin_args(s: float, m: float, ls_eps: float) -> None:
    if s <= 0:
        raise ConfigError(f"scale s must be positive, got {s}")
    if not 0.0 <= m < math.pi / 2:
        raise ConfigError(f"margin m must be in [0, pi/2) radians, got {m}")
    if not 0.0 <= ls_eps < 1.0:
        raise ConfigError(f"ls_eps must be in [0, 1), got {ls_eps}")


def arcface_logits(
    cosine: Tensor,
    labels: Tensor | None,
    *,
    s: float,
    m: float | Tensor,
    easy_margin: bool,
    ls_eps: float,
) -> Tensor:
    """Apply the additive angular margin to the target class and scale.

    Args:
        cosine: ``(B, C)`` cosine similarities.
        labels: ``(B,)`` target class indices, or ``None`` for inference (no margin).
        s: Scale.
        m: Margin in radians: a float, or a ``(B,)`` tensor of per-sample margins.
        easy_margin: Apply the margin only where ``cos > 0`` (else keep ``cos``). When
            False, use ``cos - m * sin(m)`` where ``theta + m`` would pass ``pi``.
        ls_eps: Label smoothing of the one-hot target mask.

    Returns:
        ``(B, C)`` scaled logits.
    """
    if labels is None:
        return cosine * s
    margin = torch.as_tensor(m, dtype=cosine.dtype, device=cosine.device)
    if margin.ndim == 1:
        margin = margin.unsqueeze(1)
    cos_m, sin_m = torch.cos(margin), torch.sin(margin)
    threshold = torch.cos(math.pi - margin)  # theta > pi - m  <=>  cos < cos(pi - m)
    fallback = torch.sin(margin) * margin  # = sin(pi - m) * m
    sine = torch.sqrt((1.0 - cosine * cosine).clamp(min=_SINE_EPS))
    phi = cosine * cos_m - sine * sin_m  # cos(theta + m)
    if easy_margin:
        phi = torch.where(cosine > 0, phi, cosine)
    else:
        phi = torch.where(cosine > threshold, phi, cosine - fallback)
    one_hot = torch.zeros_like(cosine)
    one_hot.scatter_(1, labels.view(-1, 1).long(), 1.0)
    if ls_eps > 0:
        one_hot = (1.0 - ls_eps) * one_hot + ls_eps / cosine.shape[1]
    return (one_hot * phi + (1.0 - one_hot) * cosine) * s


class _MarginHead(nn.Module):
    """What the ArcFace heads share: class centres, scale, margin(s), smoothing.

    The arguments are declared here once (see :class:`ArcMarginProduct`); a head with
    sub-centres keeps ``centres_per_class`` rows of weights per class.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        s: float = 30.0,
        m: float = 0.50,
        easy_margin: bool = False,
        ls_eps: float = 0.0,
        class_margins: Sequence[float] | Tensor | None = None,
        *,
        centres_per_class: int = 1,
    ) -> None:
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ConfigError("in_features and out_features must be positive")
        _check_margin_args(s, m, ls_eps)
        self.s = float(s)
        self.m = float(m)
        self.easy_margin = bool(easy_margin)
        self.ls_eps = float(ls_eps)
        margins: Tensor | None = None
        if class_margins is not None:
            margins = torch.as_tensor(class_margins, dtype=torch.float32).flatten()
            if margins.numel() != out_features:
                raise ConfigError(
                    f"class_margins has {margins.numel()} values for {out_features} classes"
                )
            if bool(((margins < 0) | (margins >= math.pi / 2)).any()):
                raise ConfigError("class_margins must lie in [0, pi/2) radians")
        self.class_margins: Tensor | None
        self.register_buffer("class_margins", margins, persistent=False)
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features * centres_per_class, in_features))
        nn.init.xavier_uniform_(self.weight)

    def _margin(self, labels: Tensor | None) -> float | Tensor:
        if labels is None or self.class_margins is None:
            return self.m
        return self.class_margins[labels.long()]

    def _logits(self, cosine: Tensor, labels: Tensor | None) -> Tensor:
        return arcface_logits(
            cosine,
            labels,
            s=self.s,
            m=self._margin(labels),
            easy_margin=self.easy_margin,
            ls_eps=self.ls_eps,
        )


class ArcMarginProduct(_MarginHead):
    """Additive angular margin (ArcFace) classification head.

    Args:
        in_features: Embedding size.
        out_features: Number of classes (known individuals).
        s: Logit scale.
        m: Additive angular margin in radians.
        easy_margin: See :func:`arcface_logits`.
        ls_eps: Label smoothing applied to the target mask.
        class_margins: Optional per-class margins (radians), e.g. from
            :func:`dynamic_margins`; they replace ``m`` for each sample's target class.

    Example:
        >>> head = ArcMarginProduct(512, 10)
        >>> logits = head(torch.randn(4, 512), torch.tensor([0, 1, 2, 3]))
        >>> logits.shape
        torch.Size([4, 10])
    """

    def cosine(self, embeddings: Tensor) -> Tensor:
        """Cosine similarity between each embedding and each class centre."""
        return F.linear(F.normalize(embeddings), F.normalize(self.weight))

    def forward(self, embeddings: Tensor, labels: Tensor | None = None) -> Tensor:
        """Return ``(B, out_features)`` scaled logits, with the margin when labelled."""
        return self._logits(self.cosine(embeddings), labels)


class SubCenterArcMarginProduct(_MarginHead):
    """Sub-centre ArcFace: ``k`` centres per class, cosine = max over a class's centres.

    Noisy catalogues (a mislabelled photo, a second distinctive flank) put their outliers
    on a non-dominant sub-centre instead of pulling the class centre;
    :meth:`dominant_subcenter` helps find such samples.

    Args:
        in_features: Embedding size.
        out_features: Number of classes.
        k: Sub-centres per class.
        **kwargs: The other arguments of :class:`ArcMarginProduct` (``s``, ``m``,
            ``easy_margin``, ``ls_eps``, ``class_margins``), by keyword.
    """

    def __init__(self, in_features: int, out_features: int, k: int = 3, **kwargs: Any) -> None:
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        super().__init__(in_features, out_features, centres_per_class=k, **kwargs)
        self.k = k

    def _all_cosines(self, embeddings: Tensor) -> Tensor:
        cos = F.linear(F.normalize(embeddings), F.normalize(self.weight))
        return cos.view(-1, self.out_features, self.k)

    def cosine(self, embeddings: Tensor) -> Tensor:
        """Per-class cosine: the best of each class's sub-centres."""
        return self._all_cosines(embeddings).amax(dim=2)

    def dominant_subcenter(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Index of the sub-centre each sample is closest to, within its labelled class."""
        cos = self._all_cosines(embeddings)
        return cos[torch.arange(cos.shape[0], device=cos.device), labels.long()].argmax(dim=1)

    def forward(self, embeddings: Tensor, labels: Tensor | None = None) -> Tensor:
        """Return ``(B, out_features)`` scaled logits, with the margin when labelled."""
        return self._logits(self.cosine(embeddings), labels)


def build_head(
    config: HeadConfig, in_features: int, out_features: int
) -> ArcMarginProduct | SubCenterArcMarginProduct:
    """The ArcFace head a :class:`~ecomarine.config.HeadConfig` describes."""
    common: dict[str, Any] = {
        "s": config.s,
        "m": config.m,
        "easy_margin": config.easy_margin,
        "ls_eps": config.ls_eps,
    }
    if config.type == "subcenter":
        return SubCenterArcMarginProduct(in_features, out_features, config.k, **common)
    return ArcMarginProduct(in_features, out_features, **common)


def dynamic_margins(
    class_counts: Sequence[int] | Tensor,
    m_min: float = 0.05,
    m_max: float = 0.5,
    power: float = -0.25,
) -> Tensor:
    """Per-class margins from class frequency: rare classes get larger margins.

    As in the Happywhale winning solutions: ``margin = a * n**power + b`` with ``a, b``
    chosen so that the rarest class gets ``m_max`` and the most frequent ``m_min``.

    Args:
        class_counts: Number of training images per class (all >= 1).
        m_min: Margin of the most frequent class (radians).
        m_max: Margin of the rarest class (radians).
        power: Exponent applied to the counts (negative).

    Returns:
        A float32 tensor of margins, one per class.
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float64).flatten()
    if counts.numel() == 0 or bool((counts < 1).any()):
        raise ConfigError("class_counts must be a non-empty sequence of counts >= 1")
    if not 0.0 <= m_min <= m_max < math.pi / 2:
        raise ConfigError("need 0 <= m_min <= m_max < pi/2")
    x = counts.pow(power)
    span = x.max() - x.min()
    if float(span) == 0.0:
        return torch.full_like(counts, m_max, dtype=torch.float32)
    scaled = (x - x.min()) / span
    return (m_min + (m_max - m_min) * scaled).to(torch.float32)


class GeM(nn.Module):
    """Generalised-mean pooling with a learnable exponent ``p``.

    ``p = 1`` is average pooling; large ``p`` approaches max pooling.

    Args:
        p: Initial exponent.
        eps: Floor applied before the power, which keeps gradients finite.
        learnable: Whether ``p`` is trained.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor([float(p)]), requires_grad=learnable)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Pool ``(B, C, H, W)`` feature maps to ``(B, C)``."""
        p = self.p.clamp(min=1.0)
        pooled = x.clamp(min=self.eps).pow(p).mean(dim=(2, 3))
        return pooled.pow(1.0 / p)
