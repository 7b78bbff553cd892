"""Threshold sweeps: the gate's accept threshold and the open-set new-individual threshold.

Every open-set calibration goes through :func:`calibrate_open_set` (labelled vectors in,
a threshold and its figures out): an identifier's shipped thresholds
(:func:`calibrate_identifier`), a gallery's own override
(:meth:`~ecomarine.gallery.Gallery.calibrate_new_individual`) and evaluation with
calibration queries alike.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .catalog import Sample
from .errors import DataError
from .metrics import average_precision_at_k, insert_new_individual, known_top_k_accuracy, roc_auc
from .search import rank_labelled
from .types import EMBEDDING_KINDS, Match

if TYPE_CHECKING:
    from .identifier import Identifier

__all__ = [
    "BinaryCalibration",
    "NewIndividualCalibration",
    "calibrate_binary",
    "calibrate_identifier",
    "calibrate_open_set",
    "choose_new_individual_threshold",
]

logger = logging.getLogger(__name__)


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
        top1: Top-1 accuracy over the known queries (``None`` when not measured).
        top5: Top-5 accuracy over the known queries (``None`` when not measured).
    """

    threshold: float
    map5: float
    map5_always_new: float
    roc_auc: float
    n_queries: int
    n_new: int
    top1: float | None = None
    top5: float | None = None

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


def calibrate_open_set(
    gallery_vectors: np.ndarray[Any, Any],
    gallery_ids: Sequence[str],
    query_vectors: np.ndarray[Any, Any],
    query_ids: Sequence[str],
    *,
    gallery_groups: Sequence[str] | None = None,
    query_groups: Sequence[str] | None = None,
    top_k: int = 5,
    new_fraction: float | None = None,
) -> NewIndividualCalibration:
    """Choose the open-set threshold for labelled queries searched among labelled vectors.

    Queries whose individual is absent from the gallery play new individuals. With groups
    (e.g. encounters), a query never matches gallery images of its own group, so a
    catalogue can be calibrated on itself (leave-group-out).

    Args:
        gallery_vectors: ``(N, D)`` unit-norm vectors of known photos.
        gallery_ids: Individual id per gallery vector.
        query_vectors: ``(Q, D)`` held-out query vectors.
        query_ids: Individual id per query.
        gallery_groups: Group per gallery vector (leave-group-out; with ``query_groups``).
        query_groups: Group per query.
        top_k: Ranks that count for MAP.
        new_fraction: Expected share of new individuals (see
            :func:`choose_new_individual_threshold`).

    Returns:
        The threshold with MAP@k, ROC-AUC and top-1/top-5 on the known queries.
    """
    cands, truths = rank_labelled(
        gallery_vectors,
        gallery_ids,
        query_vectors,
        query_ids,
        top_k=top_k,
        gallery_groups=gallery_groups,
        query_groups=query_groups,
    )
    chosen = choose_new_individual_threshold(cands, truths, k=top_k, new_fraction=new_fraction)
    return dataclasses.replace(
        chosen,
        top1=known_top_k_accuracy(cands, truths, 1),
        top5=known_top_k_accuracy(cands, truths, 5),
    )


def calibrate_identifier(
    model: Identifier,
    samples: Sequence[Sample],
    calib: Sequence[Sample],
    *,
    new_fraction: float | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Choose and set each kind's open-set threshold on held-out queries.

    The held-out queries are searched among the training images. Both sets are embedded
    through the inference path (``Identifier.embed`` on the files), not a training
    cache: a threshold must be chosen on the similarities it will be compared with. The
    chosen thresholds are written into ``model.config`` (its per-kind
    ``new_individual_thresholds``).

    Args:
        model: The identifier (single network or ensemble); its config is updated.
        samples: The gallery side: the images the model was trained on.
        calib: Held-out queries (never trained on); individuals absent from ``samples``
            count as new.
        new_fraction: Share of new individuals expected among future queries (see
            :func:`choose_new_individual_threshold`).
        workers: Decode threads.

    Returns:
        ``{"n_queries": N, "embedding": {...}, "features": {...}}``; each kind holds the
        chosen ``threshold``, its weighted ``map5``, ``roc_auc``, ``top1`` and ``top5``.
    """
    out: dict[str, Any] = {"n_queries": len(calib)}
    # One decode and backbone pass per photo gives both kinds.
    gallery, queries = (
        model.embed_kinds(
            [s.path for s in part], kinds=EMBEDDING_KINDS, batch_size=64, num_workers=workers
        )
        for part in (samples, calib)
    )
    thresholds = {}
    for kind in EMBEDDING_KINDS:
        chosen = calibrate_open_set(
            gallery[kind],
            [s.individual_id for s in samples],
            queries[kind],
            [s.individual_id for s in calib],
            new_fraction=new_fraction,
        )
        out[kind] = chosen.to_dict()
        thresholds[kind] = chosen.threshold
        logger.info("calibration (%s): %s", kind, out[kind])
    model.config = model.config.with_thresholds(thresholds)
    return out
