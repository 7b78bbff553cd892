from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ecomarine import ArcMarginProduct, ConfigError
from ecomarine.heads import GeM, SubCenterArcMarginProduct, dynamic_margins


def naive_arcface(
    emb: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    s: float,
    m: float | list[float],
    easy_margin: bool,
    ls_eps: float,
) -> torch.Tensor:
    """Per-sample, per-class loop straight from the ArcFace paper and its reference code."""
    n_cls = weight.shape[0]
    out = torch.zeros(emb.shape[0], n_cls, dtype=torch.float64)
    for i in range(emb.shape[0]):
        margin = m[int(labels[i])] if isinstance(m, list) else m
        e = emb[i].double() / emb[i].double().norm()
        for j in range(n_cls):
            w = weight[j].double() / weight[j].double().norm()
            cos = float(e @ w)
            theta = math.acos(max(-1.0, min(1.0, cos)))
            if easy_margin:
                phi = math.cos(theta + margin) if cos > 0 else cos
            elif cos > math.cos(math.pi - margin):
                phi = math.cos(theta + margin)
            else:
                phi = cos - math.sin(math.pi - margin) * margin
            target = 1.0 if j == int(labels[i]) else 0.0
            if ls_eps > 0:
                target = (1 - ls_eps) * target + ls_eps / n_cls
            out[i, j] = s * (target * phi + (1 - target) * cos)
    return out


@pytest.mark.parametrize("easy_margin", [False, True])
@pytest.mark.parametrize("ls_eps", [0.0, 0.1])
@pytest.mark.parametrize("m", [0.5, 0.3, 1.2])
def test_matches_naive_reference(easy_margin: bool, ls_eps: float, m: float) -> None:
    torch.manual_seed(0)
    head = ArcMarginProduct(8, 5, s=30.0, m=m, easy_margin=easy_margin, ls_eps=ls_eps)
    emb = torch.randn(64, 8)
    # Put some samples right on (or opposite to) their class centre so that both
    # branches (theta + m beyond pi, and cos <= 0) are exercised.
    emb[:4] = -head.weight.detach()[:4]
    emb[4:8] = head.weight.detach()[:4]
    labels = torch.randint(0, 5, (64,))
    labels[:8] = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    got = head(emb, labels).double()
    want = naive_arcface(emb, head.weight.detach(), labels, 30.0, m, easy_margin, ls_eps)
    torch.testing.assert_close(got[8:], want[8:], atol=2e-3, rtol=1e-4)
    # Exactly on a centre, float32 rounding of cos (1 - 6e-8) moves sin(theta) to ~3e-4,
    # which the scale of 30 turns into ~1e-2: inherent to float32, not to the margin.
    torch.testing.assert_close(got[:8], want[:8], atol=3e-2, rtol=1e-3)
    cos = F.linear(F.normalize(emb), F.normalize(head.weight.detach()))
    target_cos = cos[torch.arange(64), labels]
    if not easy_margin:
        assert bool((target_cos < math.cos(math.pi - m)).any())  # the fallback branch ran
    assert bool((target_cos < 0).any())
    assert bool((target_cos > 0).any())


def test_no_labels_gives_scaled_cosine() -> None:
    head = ArcMarginProduct(4, 3, s=10.0)
    emb = torch.randn(5, 4)
    expected = 10.0 * F.linear(F.normalize(emb), F.normalize(head.weight))
    torch.testing.assert_close(head(emb), expected)


def test_dynamic_margins_and_per_class_margins_match_reference() -> None:
    margins = dynamic_margins([1, 2, 10, 100], m_min=0.1, m_max=0.5)
    assert margins[0].item() == pytest.approx(0.5)
    assert margins[-1].item() == pytest.approx(0.1)
    assert bool((margins[:-1] >= margins[1:]).all())  # rarer -> larger
    torch.manual_seed(1)
    head = ArcMarginProduct(6, 4, class_margins=margins)
    emb = torch.randn(32, 6)
    labels = torch.randint(0, 4, (32,))
    want = naive_arcface(emb, head.weight.detach(), labels, 30.0, margins.tolist(), False, 0.0)
    torch.testing.assert_close(head(emb, labels).double(), want, atol=2e-3, rtol=1e-4)


def test_subcenter_takes_max_over_subcenters() -> None:
    torch.manual_seed(2)
    head = SubCenterArcMarginProduct(6, 3, k=2)
    emb = torch.randn(10, 6)
    w = F.normalize(head.weight.detach()).view(3, 2, 6)
    e = F.normalize(emb)
    want = torch.einsum("bd,ckd->bck", e, w).amax(dim=2) * head.s
    torch.testing.assert_close(head(emb), want, rtol=1e-5, atol=1e-5)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    dom = head.dominant_subcenter(emb, labels)
    assert dom.shape == (10,)
    assert set(dom.tolist()) <= {0, 1}
    # With labels, the subcentre cosine feeds the same margin as ArcFace.
    cos = head.cosine(emb)
    plain = ArcMarginProduct(6, 3)
    with torch.no_grad():
        got = head(emb, labels)
        from ecomarine.heads import arcface_logits

        ref = arcface_logits(cos, labels, s=30.0, m=0.5, easy_margin=False, ls_eps=0.0)
    torch.testing.assert_close(got, ref)
    assert plain.out_features == 3


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32),
        min_size=12,
        max_size=12,
    ),
    st.integers(0, 2),
    st.booleans(),
    st.sampled_from([0.0, 0.1]),
    st.booleans(),
)
def test_logits_and_gradients_finite(
    values: list[float], label: int, easy: bool, ls: float, on_centre: bool
) -> None:
    head = ArcMarginProduct(4, 3, easy_margin=easy, ls_eps=ls)
    emb = torch.tensor(values, dtype=torch.float32).view(3, 4)
    if on_centre:  # cos = +1 and -1 exactly: where sqrt(1 - cos^2) has no derivative
        emb = torch.stack([head.weight[label].detach(), -head.weight[label].detach(), emb[2]])
    emb.requires_grad_(True)
    labels = torch.tensor([label] * 3)
    logits = head(emb, labels)
    assert bool(torch.isfinite(logits).all())
    F.cross_entropy(logits, labels).backward()
    assert emb.grad is not None
    assert bool(torch.isfinite(emb.grad).all())
    assert head.weight.grad is not None
    assert bool(torch.isfinite(head.weight.grad).all())


def test_gem_pooling() -> None:
    x = torch.rand(2, 3, 4, 5) + 0.1
    gem = GeM(p=1.0)
    torch.testing.assert_close(gem(x), x.mean(dim=(2, 3)))
    gem3 = GeM(p=3.0)
    torch.testing.assert_close(gem3(x), x.pow(3).mean(dim=(2, 3)).pow(1 / 3))
    out = GeM()(x)
    out.sum().backward()
    assert gem3.p.requires_grad


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="margin"):
        ArcMarginProduct(4, 3, m=2.0)
    with pytest.raises(ConfigError, match="scale"):
        ArcMarginProduct(4, 3, s=0)
    with pytest.raises(ConfigError, match="class_margins"):
        ArcMarginProduct(4, 3, class_margins=[0.1, 0.2])
    with pytest.raises(ConfigError):
        dynamic_margins([0, 3])


def test_device_follows_module() -> None:
    head = ArcMarginProduct(4, 3, class_margins=[0.1, 0.2, 0.3]).to(torch.float64)
    out = head(torch.randn(2, 4, dtype=torch.float64), torch.tensor([0, 2]))
    assert out.dtype == torch.float64
