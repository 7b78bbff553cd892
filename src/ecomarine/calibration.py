"""Threshold sweeps: the gate's accept threshold and the open-set new-individual threshold."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import DataError
from .metrics import average_precision_at_k, insert_new_individual, roc_auc
from .types import Match

__all__ = [
    "BinaryCalibration",
    "NewIndividualCalibration",
    "calibrate_binary",
    "choose_new_individual_threshold",
]


@dataclass(frozen=True)
class BinaryCalibration:
    """The result of a threshold sweep for a positive/negative decision (``score >= t``).

    Attributes:
        threshold: The chosen threshold.
        tpr: True-positive rate at the threshold.
        tnr: True-negative rate at the threshold.
        roc_auc: Threshold-free ROC-AUC.
        tp: True positives. fn: False negatives. tn: True negatives. fp: False positives.
        met_targets: Whether both ``min_tpr`` and ``min_tnr`` could be met.
        note: How the threshold was chosen.
    """

    threshold: float
    tpr: float
    tnr: float
    roc_auc: float
    tp: int
    fn: int
    tn: int
    fp: int
    met_targets: bool
    note: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _rates(
    pos: np.ndarray[Any, Any], neg: np.ndarray[Any, Any], t: float
) -> tuple[int, int, int, int]:
    tp = int((pos >= t).sum())
    tn = int((neg < t).sum())
    return tp, len(pos) - tp, tn, len(neg) - tn


def calibrate_binary(
    positive_scores: Sequence[float] | np.ndarray[Any, Any],
    negative_scores: Sequence[float] | np.ndarray[Any, Any],
    *,
    min_tpr: float = 0.85,
    min_tnr: float = 0.90,
) -> BinaryCalibration:
    """Pick the smallest threshold meeting both targets, else the best balanced one.

    Raises:
        DataError: When either class has no scores.
    """
    pos = np.asarray(positive_scores, dtype=np.float64)
    neg = np.asarray(negative_scores, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise DataError("calibration needs at least one positive and one negative score")
    candidates = np.unique(np.concatenate([pos, neg, [np.nextafter(pos.max(), np.inf)]]))
    best: tuple[float, float] | None = None
    chosen: float | None = None
    for t in candidates:  # ascending: the first that meets both is the smallest
        tp, fn, tn, fp = _rates(pos, neg, float(t))
        tpr, tnr = tp / len(pos), tn / len(neg)
        if tpr >= min_tpr and tnr >= min_tnr:
            chosen = float(t)
            break
        balanced = (tpr + tnr) / 2
        if best is None or balanced > best[0]:
            best = (balanced, float(t))
    met = chosen is not None
    if chosen is None:
        assert best is not None
        chosen = best[1]
        note = (
            f"no threshold reaches TPR >= {min_tpr} and TNR >= {min_tnr}; "
            "chose the best balanced accuracy instead"
        )
    else:
        note = f"smallest threshold with TPR >= {min_tpr} and TNR >= {min_tnr}"
    tp, fn, tn, fp = _rates(pos, neg, chosen)
    labels = np.concatenate([np.ones(len(pos), bool), np.zeros(len(neg), bool)])
    return BinaryCalibration(
        threshold=chosen,
        tpr=tp / len(pos),
        tnr=tn / len(neg),
        roc_auc=roc_auc(np.concatenate([pos, neg]), labels),
        tp=tp,
        fn=fn,
        tn=tn,
        fp=fp,
        met_targets=met,
        note=note,
    )


@dataclass(frozen=True)
class NewIndividualCalibration:
    """The chosen open-set threshold and what it achieved on the calibration queries.

    Attributes:
        threshold: Cosine below which the best match is declared a new individual.
        map5: MAP@5 (with ``new_individual``) at that threshold.
        map5_always_new: MAP@5 when ``new_individual`` is always ranked first.
        roc_auc: How well the best-match score separates known from new queries.
        n_queries: Calibration queries. n_new: Those whose individual is absent.
    """

    threshold: float
    map5: float
    map5_always_new: float
    roc_auc: float
    n_queries: int
    n_new: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def choose_new_individual_threshold(
    candidates: Sequence[Sequence[Match]],
    truths: Sequence[str],
    *,
    k: int = 5,
    new_fraction: float | None = None,
) -> NewIndividualCalibration:
    """Choose the threshold that maximises MAP@k on labelled calibration queries.

    Args:
        candidates: Per query, ranked gallery matches (best first).
        truths: Per query, the true individual id, or ``"new_individual"``.
        k: Ranks that count.
        new_fraction: Expected share of new individuals among future queries. A
            held-out calibration split often has a different share than the season you
            will identify; queries are reweighted so that new ones carry this share of
            the objective (and of the reported ``map5``). ``None`` keeps the observed mix.

    Raises:
        DataError: With no queries, or lengths that differ.
    """
    if not truths or len(candidates) != len(truths):
        raise DataError("need one candidate list per calibration query, and at least one")
    is_new = np.array([t == "new_individual" for t in truths])
    weights = np.ones(len(truths))
    if new_fraction is not None:
        if not 0.0 < new_fraction < 1.0 or is_new.all() or not is_new.any():
            raise DataError("new_fraction needs both kinds of query and a value in (0, 1)")
        weights[is_new] = new_fraction / is_new.sum()
        weights[~is_new] = (1.0 - new_fraction) / (~is_new).sum()
    weights /= weights.sum()
    best_scores = np.array([c[0].score if c else -1.0 for c in candidates])
    grid = np.unique(np.concatenate([best_scores, [-1.0, 1.0 + 1e-6]]))
    # Midpoints between observed scores generalise better than the scores themselves.
    thresholds = np.unique(np.concatenate([grid, (grid[1:] + grid[:-1]) / 2]))
    best_t, best_map = 0.0, -1.0
    for t in thresholds:
        value = float(
            sum(
                w * average_precision_at_k(insert_new_individual(c, float(t), k), truth, k)
                for c, truth, w in zip(candidates, truths, weights, strict=True)
            )
        )
        if value > best_map + 1e-12:
            best_t, best_map = float(t), value
    always_new = float(weights[is_new].sum())
    auc = roc_auc(-best_scores, is_new)
    return NewIndividualCalibration(
        threshold=float(np.clip(best_t, -1.0, 1.0)),
        map5=best_map,
        map5_always_new=always_new,
        roc_auc=auc if not math.isnan(auc) else float("nan"),
        n_queries=len(truths),
        n_new=int(is_new.sum()),
    )
