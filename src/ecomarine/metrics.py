"""Identification metrics: MAP@k with ``new_individual``, top-k, ROC-AUC, retrieval mAP.

Each function is small and exact; the test suite checks them against hand-computed
examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .types import Match

__all__ = [
    "NEW_INDIVIDUAL",
    "average_precision_at_k",
    "insert_new_individual",
    "known_top_k_accuracy",
    "map_at_k",
    "retrieval_map",
    "roc_auc",
    "top_k_accuracy",
]

#: The label a query of an animal absent from the gallery must be answered with.
NEW_INDIVIDUAL = "new_individual"


def average_precision_at_k(predicted: Sequence[str], truth: str, k: int = 5) -> float:
    """Happywhale's per-query score: ``1 / rank`` of the first correct label in the top k.

    Duplicate labels after the first occurrence are ignored, as in the Kaggle metric.
    """
    seen: set[str] = set()
    rank = 0
    for label in predicted:
        if label in seen:
            continue
        seen.add(label)
        rank += 1
        if rank > k:
            break
        if label == truth:
            return 1.0 / rank
    return 0.0


def map_at_k(predictions: Sequence[Sequence[str]], truths: Sequence[str], k: int = 5) -> float:
    """Mean of :func:`average_precision_at_k` over queries (0.0 for no queries)."""
    if len(predictions) != len(truths):
        raise ValueError("predictions and truths differ in length")
    if not truths:
        return 0.0
    return float(
        np.mean([average_precision_at_k(p, t, k) for p, t in zip(predictions, truths, strict=True)])
    )


def top_k_accuracy(predictions: Sequence[Sequence[str]], truths: Sequence[str], k: int) -> float:
    """Fraction of queries whose truth is among the first ``k`` predicted labels."""
    if len(predictions) != len(truths):
        raise ValueError("predictions and truths differ in length")
    if not truths:
        return 0.0
    hits = sum(t in list(p)[:k] for p, t in zip(predictions, truths, strict=True))
    return hits / len(truths)


def known_top_k_accuracy(
    candidates: Sequence[Sequence[Match]], truths: Sequence[str], k: int
) -> float:
    """Top-k accuracy over the queries whose truth is a known individual (0.0 if none)."""
    pairs = [
        ([m.individual_id for m in c], t)
        for c, t in zip(candidates, truths, strict=True)
        if t != NEW_INDIVIDUAL
    ]
    return top_k_accuracy([p for p, _ in pairs], [t for _, t in pairs], k)


def insert_new_individual(
    candidates: Sequence[Match], threshold: float | None, k: int = 5
) -> list[str]:
    """Ranked labels with ``new_individual`` inserted where scores fall under ``threshold``.

    ``new_individual`` goes just before the first candidate scoring below the threshold
    (first of all when the best candidate does), so confident matches keep their rank.
    With ``threshold=None`` it is never inserted.
    """
    labels: list[str] = []
    inserted = threshold is None
    for match in candidates:
        if not inserted and match.score < threshold:  # type: ignore[operator]
            labels.append(NEW_INDIVIDUAL)
            inserted = True
        labels.append(match.individual_id)
    if not inserted:
        labels.append(NEW_INDIVIDUAL)
    return labels[:k]


def roc_auc(
    scores: Sequence[float] | np.ndarray[Any, Any], labels: Sequence[bool] | np.ndarray[Any, Any]
) -> float:
    """Area under the ROC curve (probability a positive outscores a negative; ties 1/2).

    Returns NaN when one class is absent.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # Average ranks over ties (Mann-Whitney U).
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def retrieval_map(
    similarity: np.ndarray[Any, Any],
    query_labels: Sequence[str],
    database_labels: Sequence[str],
) -> float:
    """Mean average precision of ranking the database for each query by similarity.

    Queries without any relevant database item are skipped; NaN when none has one.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    db = np.asarray(database_labels)
    aps = []
    for row, label in zip(sim, query_labels, strict=True):
        relevant = db == label
        n_rel = int(relevant.sum())
        if n_rel == 0:
            continue
        order = np.argsort(-row, kind="mergesort")
        hits = relevant[order]
        cum = np.cumsum(hits)
        precision_at_hits = cum[hits] / (np.flatnonzero(hits) + 1.0)
        aps.append(float(precision_at_hits.sum() / n_rel))
    return float(np.mean(aps)) if aps else float("nan")
