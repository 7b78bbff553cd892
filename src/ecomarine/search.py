"""Ranking *individuals* (not images) for query vectors: the one search the library has.

Image vectors live in a :class:`~ecomarine.index.VectorIndex`; each image belongs to one
individual. An individual's score is the best (``"max"``) or the mean (``"mean"``) cosine
over its images. :class:`~ecomarine.gallery.Gallery`, evaluation and every open-set
calibration rank through :func:`rank_individuals`, so a threshold is always chosen on the
scores it will be compared with.

Leave-group-out ranking (``exclude``) skips, for each query, the images that share its
group (an encounter): calibrating on a catalogue itself then imitates photos from a new
sighting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .errors import GalleryError
from .index import VectorIndex
from .metrics import NEW_INDIVIDUAL
from .types import Match

__all__ = [
    "SET_AGGREGATIONS",
    "Aggregation",
    "Hit",
    "SetHit",
    "check_set_aggregation",
    "individual_prototypes",
    "individual_rows",
    "photo_individual_scores",
    "rank_individuals",
    "rank_individuals_for_set",
    "rank_labelled",
]

_Arr = np.ndarray[Any, Any]
_F32 = np.ndarray[Any, np.dtype[np.float32]]

#: How image similarities combine into an individual's score.
Aggregation = Literal["max", "mean"]
AGGREGATIONS: tuple[Aggregation, ...] = ("max", "mean")


@dataclass(frozen=True)
class Hit:
    """One ranked individual for a query.

    Attributes:
        individual: Row of the individual in the caller's list of individuals.
        score: The aggregated cosine.
        image: Row of the image that supports the match best.
    """

    individual: int
    score: float
    image: int


def individual_rows(image_ids: Sequence[str]) -> tuple[list[str], _Arr]:
    """The sorted individual ids, and each image's row among them (what ranking takes)."""
    names = sorted(set(image_ids))
    pos = {name: i for i, name in enumerate(names)}
    return names, np.array([pos[x] for x in image_ids], dtype=np.int64)


def rank_individuals(
    index: VectorIndex,
    image_individuals: _Arr,
    queries: _F32,
    top_k: int,
    *,
    aggregation: Aggregation = "max",
    exclude: tuple[_Arr, _Arr] | None = None,
) -> list[list[Hit]]:
    """The ``top_k`` best individuals for each query, best first.

    Args:
        index: The image vectors.
        image_individuals: ``(N,)`` int individual row of each image (``0..I-1``).
        queries: ``(Q, D)`` unit-norm query vectors.
        top_k: Individuals per query.
        aggregation: ``"max"`` (the best image) or ``"mean"`` (mean cosine).
        exclude: ``(query_groups, image_groups)``, int arrays: a query never matches an
            image of its own group (``"max"`` only).

    Raises:
        GalleryError: ``top_k`` below one, an unknown aggregation, or ``exclude`` with
            ``"mean"``.
    """
    if top_k < 1:
        raise GalleryError("top_k must be >= 1")
    if aggregation not in AGGREGATIONS:
        raise GalleryError(f"aggregation must be 'max' or 'mean', got {aggregation!r}")
    if len(index.vectors) == 0:
        return [[] for _ in range(len(queries))]
    labels = np.asarray(image_individuals, dtype=np.int64)
    if aggregation == "mean":
        if exclude is not None:
            raise GalleryError("leave-group-out ranking needs max aggregation")
        return _rank_mean(index.vectors, labels, queries, top_k)
    return _rank_max(index, labels, queries, top_k, exclude)


def _rank_max(
    index: VectorIndex,
    labels: _Arr,
    q: _F32,
    top_k: int,
    exclude: tuple[_Arr, _Arr] | None,
) -> list[list[Hit]]:
    # Max aggregation is exact once the retrieved images cover top_k individuals: any
    # individual not retrieved scores at most the last retrieved image.
    n = len(labels)
    k = min(n, max(top_k * 8, 32))
    pending = np.arange(len(q))
    out: dict[int, list[Hit]] = {}
    q_groups = image_groups = None
    if exclude is not None:
        q_groups, image_groups = (np.asarray(a) for a in exclude)
    while len(pending):
        scores, idx = index.search(q[pending], k)
        retry: list[int] = []
        for row, qi in enumerate(pending.tolist()):
            valid = idx[row] >= 0
            if image_groups is not None and q_groups is not None:
                valid &= image_groups[np.where(valid, idx[row], 0)] != q_groups[qi]
            rows, sims = idx[row][valid], scores[row][valid]
            hits = _first_per_individual(labels, rows, sims, top_k)
            if len(hits) >= top_k or k >= n:
                out[qi] = hits
            else:
                retry.append(qi)
        pending = np.asarray(retry, dtype=np.int64)
        k = min(n, k * 4)
    return [out[qi] for qi in range(len(q))]


def _first_per_individual(labels: _Arr, rows: _Arr, sims: _Arr, top_k: int) -> list[Hit]:
    seen: set[int] = set()
    hits: list[Hit] = []
    for s, i in zip(sims.tolist(), rows.tolist(), strict=True):
        ind = int(labels[i])
        if ind in seen:
            continue
        seen.add(ind)
        hits.append(Hit(ind, float(s), int(i)))
        if len(hits) == top_k:
            break
    return hits


def _rank_mean(vectors: _F32, labels: _Arr, q: _F32, top_k: int) -> list[list[Hit]]:
    n_ind = int(labels.max()) + 1
    sums = np.zeros((n_ind, vectors.shape[1]), np.float64)
    np.add.at(sums, labels, vectors)
    counts = np.bincount(labels, minlength=n_ind)[:, None]
    present = counts[:, 0] > 0
    centroids = (sums / np.maximum(counts, 1)).astype(np.float32)  # mean cosine = q . mean
    out = []
    for row in q:
        scores = np.where(present, centroids @ row, -np.inf)
        order = np.lexsort((np.arange(n_ind), -scores))[: min(top_k, int(present.sum()))]
        hits = []
        for j in order:
            members = np.flatnonzero(labels == j)
            best = members[int(np.argmax(vectors[members] @ row))]
            hits.append(Hit(int(j), float(scores[j]), int(best)))
        out.append(hits)
    return out


def rank_labelled(
    gallery_vectors: _Arr,
    gallery_ids: Sequence[str],
    query_vectors: _Arr,
    query_ids: Sequence[str],
    *,
    top_k: int = 5,
    gallery_groups: Sequence[str] | None = None,
    query_groups: Sequence[str] | None = None,
) -> tuple[list[list[Match]], list[str]]:
    """Rank labelled queries among labelled gallery vectors (exact search, max aggregation).

    Returns the ranked candidates per query and each query's truth: its id, or
    ``"new_individual"`` when no gallery image *it may match* shows that individual. With
    groups, a query may not match gallery images of its own group (leave-group-out), and
    it counts as new when its individual has no image outside that group.

    Raises:
        GalleryError: Mismatched lengths, or groups given for one side only.
    """
    gallery = np.ascontiguousarray(gallery_vectors, dtype=np.float32)
    queries = np.ascontiguousarray(np.atleast_2d(query_vectors), dtype=np.float32)
    if len(gallery) != len(gallery_ids) or len(queries) != len(query_ids):
        raise GalleryError("one id per vector is needed on both sides")
    if (gallery_groups is None) != (query_groups is None):
        raise GalleryError("pass groups for both the gallery and the queries, or neither")
    names, labels = individual_rows(gallery_ids)
    exclude = None
    if gallery_groups is not None and query_groups is not None:
        codes: dict[str, int] = {}
        g_codes = np.array([codes.setdefault(g, len(codes)) for g in gallery_groups])
        q_codes = np.array([codes.setdefault(g, len(codes)) for g in query_groups])
        exclude = (q_codes, g_codes)
        # An individual is "known" to a query only through images outside its group.
        groups_of: dict[str, set[int]] = {}
        for gid, g in zip(gallery_ids, g_codes.tolist(), strict=True):
            groups_of.setdefault(gid, set()).add(g)
        truths = [
            q if groups_of.get(q, set()) - {int(c)} else NEW_INDIVIDUAL
            for q, c in zip(query_ids, q_codes.tolist(), strict=True)
        ]
    else:
        known = set(gallery_ids)
        truths = [q if q in known else NEW_INDIVIDUAL for q in query_ids]
    index = VectorIndex(gallery, kind="flat")
    hits = rank_individuals(index, labels, queries, top_k, exclude=exclude)
    return [[Match(names[h.individual], h.score) for h in row] for row in hits], truths


#: How a sighting's photos combine into one score per individual. ``"centroid"``: the
#: photos' vectors are averaged (and renormalised) into one query, scored against each
#: individual's best-matching image. ``"prototype"``: that averaged query scored against
#: each individual's averaged (renormalised) catalogue vector, its prototype. The others
#: first score every individual by its best-matching image, photo by photo; then
#: ``"max"`` keeps the best photo, ``"mean"`` averages all photos, and ``"topK"``
#: (``"top2"``, ``"top3"``, ...) averages the K best photos (all of them when the sighting
#: has fewer).
SET_AGGREGATIONS: tuple[str, ...] = (
    "centroid",
    "prototype",
    "max",
    "mean",
    "top2",
    "top3",
    "top5",
)


@dataclass(frozen=True)
class SetHit:
    """One ranked individual for a set of query photos (a sighting).

    Attributes:
        individual: Row of the individual in the caller's list of individuals.
        score: The aggregated score.
        evidence: Per query photo, ``(photo, image, cosine)``: the individual's image that
            matched that photo best, best photo first.
    """

    individual: int
    score: float
    evidence: tuple[tuple[int, int, float], ...]


def check_set_aggregation(aggregation: str) -> int | None:
    """How many photos an aggregation averages (``None``: all), after checking its name.

    Raises:
        GalleryError: For an unknown aggregation.
    """  # "centroid" averages vectors, not scores; None says "every photo" for both
    if aggregation == "max":
        return 1
    if aggregation in ("mean", "centroid", "prototype"):
        return None
    if aggregation.startswith("top") and aggregation[3:].isdigit() and int(aggregation[3:]) >= 1:
        return int(aggregation[3:])
    raise GalleryError(
        "sighting aggregation must be 'centroid', 'prototype', 'max', 'mean' or 'topK' "
        "(e.g. 'top3'), "
        f"got {aggregation!r}"
    )


def photo_individual_scores(vectors: _F32, labels: _Arr, queries: _F32) -> _Arr:
    """Per query photo and individual: the best cosine over the individual's images.

    Exact (a dense product over every image): a sighting has a few photos, and their
    scores for *every* individual are needed to combine them.

    Returns:
        ``(Q, I)`` scores; individuals without images score ``-inf``.
    """
    n_ind = int(labels.max()) + 1 if len(labels) else 0
    scores = np.full((len(queries), n_ind), -np.inf, dtype=np.float64)
    if not len(labels):
        return scores
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(n_ind))
    present = np.bincount(labels, minlength=n_ind) > 0
    sims = queries @ vectors[order].T  # (Q, N), images grouped by individual
    scores[:, present] = np.maximum.reduceat(sims, starts[present], axis=1)
    return scores


def individual_prototypes(vectors: _F32, labels: _Arr) -> _Arr:
    """Each individual's mean image vector, renormalised (``(I, D)``; NaN rows: no image).

    An individual whose images cancel out (a zero mean) also gets a NaN row: it then
    scores ``NaN`` and is left out of the ranking, as an individual without images is.
    """
    n_ind = int(labels.max()) + 1 if len(labels) else 0
    sums = np.zeros((n_ind, vectors.shape[1]), dtype=np.float64)
    if n_ind:
        order = np.argsort(labels, kind="stable")
        starts = np.searchsorted(labels[order], np.arange(n_ind))
        present = np.bincount(labels, minlength=n_ind) > 0
        sums[present] = np.add.reduceat(vectors[order].astype(np.float64), starts[present])
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 1e-6, sums / norms, np.nan)


def rank_individuals_for_set(
    vectors: _F32, labels: _Arr, queries: _F32, top_k: int, *, aggregation: str = "top3"
) -> list[SetHit]:
    """The ``top_k`` best individuals for a set of query photos of one animal.

    Args:
        vectors: ``(N, D)`` unit-norm image vectors.
        labels: ``(N,)`` individual row of each image.
        queries: ``(Q, D)`` unit-norm vectors of the sighting's photos (``Q >= 1``).
        top_k: Individuals to return.
        aggregation: See :data:`SET_AGGREGATIONS`.

    Raises:
        GalleryError: ``top_k`` below one, no query photo, or an unknown aggregation.
    """
    k_photos = check_set_aggregation(aggregation)
    if top_k < 1:
        raise GalleryError("top_k must be >= 1")
    if len(queries) == 0:
        raise GalleryError("a sighting needs at least one photo")
    if len(vectors) == 0:
        return []
    labels = np.asarray(labels, np.int64)
    scores = photo_individual_scores(vectors, labels, queries)
    if aggregation in ("centroid", "prototype"):
        centre = queries.mean(axis=0)
        norm = float(np.linalg.norm(centre))
        # Opposite photos cancel out: fall back to the first photo (nothing to average).
        centre = (centre / norm if norm > 1e-6 else queries[0]).astype(np.float32)
        if aggregation == "centroid":
            combined = photo_individual_scores(vectors, labels, centre[None])[0]
        else:
            combined = individual_prototypes(vectors, labels) @ centre
    else:
        ranked_photos = -np.sort(-scores, axis=0)  # each individual's photos, best first
        take = len(queries) if k_photos is None else min(k_photos, len(queries))
        combined = ranked_photos[:take].mean(axis=0)
    valid = np.isfinite(combined)
    order = np.lexsort((np.arange(len(combined)), -np.where(valid, combined, -np.inf)))
    out = []
    for ind in order[: min(top_k, int(valid.sum()))].tolist():
        members = np.flatnonzero(labels == ind)
        best_image = members[np.argmax(queries @ vectors[members].T, axis=1)]
        photos = np.argsort(-scores[:, ind], kind="stable")
        evidence = tuple(
            (int(p), int(best_image[p]), float(scores[p, ind])) for p in photos.tolist()
        )
        out.append(SetHit(int(ind), float(combined[ind]), evidence))
    return out
