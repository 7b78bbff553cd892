"""Calibrated probabilities and conformal candidate sets, instead of a bare threshold.

Fitted once on held-out queries (the calibration split: photos the model never trained
on, searched among its training catalogue), shipped in the model's ``config.json``:

* ``p_known``: the probability that the animal is in the catalogue, a logistic function
  of the best match's score (Platt scaling). It is calibrated for the share of new
  animals of the calibration queries and re-weighted (Bayes' rule on the prior odds) for
  the share you expect, ``new_share``, without re-running any network.
* Per candidate, the probability that it is that individual: ``p_known`` times a softmax
  over the ranked candidates' scores, with a temperature and an "anyone else in the
  catalogue" term fitted on the known calibration queries. The candidates'
  probabilities, ``P(new)`` and ``P(other)`` sum to one.
* A conformal candidate set (split conformal, weighted for the share of new animals):
  the labels whose probability is high enough that the set contains the true answer with
  probability at least ``1 - alpha``. Its labels are individual ids,
  :data:`NEW_INDIVIDUAL` and :data:`OTHER_KNOWN` ("someone in the catalogue not listed").
  With ``method="mondrian"`` the guarantee holds for known and for new animals each
  (class-conditional conformal: one threshold per class), whatever their share.

The guarantee assumes the photos you identify are exchangeable with the calibration
queries, up to the share of new animals: another species, another camera or viewpoint,
or a very different catalogue breaks it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError, DataError
from .metrics import NEW_INDIVIDUAL
from .types import Match

__all__ = [
    "DEFAULT_ALPHA",
    "LIST_SIZE",
    "NEW_INDIVIDUAL",
    "OTHER_KNOWN",
    "SET_METHODS",
    "Assessment",
    "UncertaintyCalibration",
    "evaluate_uncertainty",
    "expected_calibration_error",
    "fit_uncertainty",
]

#: The set label for "someone in the catalogue who is not among the listed candidates".
OTHER_KNOWN = "other_known"
#: Default miscoverage: sets contain the answer 90 % of the time.
DEFAULT_ALPHA = 0.1
#: Candidates that get a probability (the rest share ``P(other)``).
LIST_SIZE = 50
#: Most calibration queries a config may carry.
MAX_CALIBRATION_QUERIES = 200_000
#: How the conformal sets are calibrated: ``"marginal"`` (one threshold, the weighted
#: split-conformal guarantee over all photos) or ``"mondrian"`` (one threshold for new
#: animals and one for known ones: each class covered at ``1 - alpha``).
SET_METHODS = ("marginal", "mondrian")


@dataclass(frozen=True)
class Assessment:
    """The calibrated view of one prediction.

    Attributes:
        p_known: Probability that the animal is in the catalogue.
        candidate_ids: The ranked candidates assessed (best first).
        probabilities: Per ranked candidate, the probability it is that one.
        p_other: Probability that it is a catalogued individual not in the list.
        candidate_set: The conformal set, most probable first.
        alpha: The set's miscoverage (``1 - alpha`` is the guaranteed coverage).
        new_share: The share of new animals assumed.
    """

    p_known: float
    candidate_ids: tuple[str, ...]
    probabilities: tuple[float, ...]
    p_other: float
    candidate_set: tuple[str, ...]
    alpha: float
    new_share: float


def _check_share(value: float, name: str) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 < value < 1.0):
        raise ConfigError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class UncertaintyCalibration:
    """What :func:`fit_uncertainty` learnt from held-out queries (stored in ``config.json``).

    Attributes:
        slope: Platt slope on the best score.
        intercept: Platt intercept (at the calibration queries' share of known animals).
        calibration_known_share: Share of known animals among the calibration queries.
        temperature: Softmax temperature over the candidates' scores.
        other_logit: The logit of "someone else in the catalogue" in that softmax.
        new_share: Default expected share of new animals (when the caller gives none).
        best_scores: Each calibration query's best score.
        truth_probability: Each calibration query's probability of its true identity
            given that it is known (``None`` for new animals).
        method: How the sets are calibrated (see :data:`SET_METHODS`).
    """

    slope: float
    intercept: float
    calibration_known_share: float
    temperature: float
    other_logit: float
    new_share: float
    best_scores: tuple[float, ...]
    truth_probability: tuple[float | None, ...]
    method: str = "marginal"

    def __post_init__(self) -> None:
        if self.method not in SET_METHODS:
            raise ConfigError(f"uncertainty: method must be one of {SET_METHODS}")
        for name in ("slope", "intercept", "temperature", "other_logit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"uncertainty: {name} must be a number")
            if not math.isfinite(value) or abs(value) > 1e6:
                raise ConfigError(f"uncertainty: {name} must be finite and reasonable")
        if self.temperature <= 0:
            raise ConfigError("uncertainty: temperature must be positive")
        _check_share(self.calibration_known_share, "uncertainty: calibration_known_share")
        _check_share(self.new_share, "uncertainty: new_share")
        n = len(self.best_scores)
        if not 1 <= n <= MAX_CALIBRATION_QUERIES or len(self.truth_probability) != n:
            raise ConfigError("uncertainty: one best score and one truth probability per query")
        for s in self.best_scores:
            if isinstance(s, bool) or not isinstance(s, int | float) or not -1.0 <= s <= 1.0:
                raise ConfigError("uncertainty: best scores must be cosines in [-1, 1]")
        for p in self.truth_probability:
            if p is not None and (
                isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0
            ):
                raise ConfigError("uncertainty: truth probabilities must be in [0, 1] or null")

    # --- probabilities ----------------------------------------------------------------

    def p_known(
        self, best: np.ndarray[Any, Any], new_share: float | None = None
    ) -> np.ndarray[Any, Any]:
        """``P(known)`` for best-match scores, at the share of new animals ``new_share``."""
        share = self.new_share if new_share is None else _check_share(new_share, "new_share")
        pi_c, pi_t = self.calibration_known_share, 1.0 - share
        shift = math.log(pi_t / (1 - pi_t)) - math.log(pi_c / (1 - pi_c))
        z = self.slope * np.asarray(best, np.float64) + self.intercept + shift
        return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))

    def identity(self, scores: Sequence[float]) -> tuple[np.ndarray[Any, Any], float]:
        """Given known: per listed candidate its probability, and ``P(other)``."""
        return _identity(scores, self.temperature, self.other_logit)

    def quantile(self, alpha: float, new_share: float | None = None) -> float:
        """The conformal threshold on ``1 - P(true label)`` for miscoverage ``alpha``.

        Split conformal with weights for the share of new animals (label shift): new and
        known calibration queries are re-weighted to ``new_share``; the test point gets
        the larger weight, which keeps the guarantee. ``1.0`` when the calibration
        queries are too few for ``alpha``: the set is then every label. (For
        ``method="mondrian"``, see :meth:`class_quantiles`.)
        """
        _check_alpha(alpha)
        share = self.new_share if new_share is None else _check_share(new_share, "new_share")
        scores, known = self._nonconformity(share)
        w_new = share / (1.0 - self.calibration_known_share)
        w_known = (1.0 - share) / self.calibration_known_share
        weights = np.where(known, w_known, w_new)
        order = np.argsort(scores, kind="stable")
        mass = np.cumsum(weights[order]) / (weights.sum() + max(w_new, w_known))
        reached = np.flatnonzero(mass >= 1.0 - alpha)
        return 1.0 if not len(reached) else float(scores[order][reached[0]])

    def class_quantiles(self, alpha: float, new_share: float | None = None) -> tuple[float, float]:
        """``(new, known)`` thresholds on ``1 - P(label)`` of Mondrian conformal sets.

        Each is the split-conformal quantile over the calibration queries of that class
        alone, so the set holds ``new_individual`` for at least ``1 - alpha`` of new
        animals and the true identity for at least ``1 - alpha`` of known ones, whatever
        their share (which still moves the probabilities). ``1.0`` where a class has too
        few calibration queries for ``alpha``.
        """
        _check_alpha(alpha)
        share = self.new_share if new_share is None else _check_share(new_share, "new_share")
        scores, known = self._nonconformity(share)
        out = []
        for members in (scores[~known], scores[known]):
            ordered = np.sort(members)
            rank = math.ceil((len(ordered) + 1) * (1.0 - alpha)) - 1
            out.append(1.0 if rank >= len(ordered) else float(ordered[rank]))
        return out[0], out[1]

    def _nonconformity(self, share: float) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        """Each calibration query's ``1 - P(true label)`` at ``share``, and whether known."""
        best = np.asarray(self.best_scores, np.float64)
        known = np.array([p is not None for p in self.truth_probability])
        truth = np.array([0.0 if p is None else p for p in self.truth_probability])
        pk = self.p_known(best, share)
        return np.where(known, 1.0 - pk * truth, pk), known

    def assess(
        self,
        candidates: Sequence[Match],
        *,
        alpha: float = DEFAULT_ALPHA,
        new_share: float | None = None,
    ) -> Assessment:
        """Probabilities and the conformal set for one ranked candidate list (best first).

        Give the longest list you have (up to :data:`LIST_SIZE`); the probabilities of the
        first ones do not depend on how many follow, but the set may name any listed one.
        """
        share = self.new_share if new_share is None else _check_share(new_share, "new_share")
        best = candidates[0].score if candidates else -1.0
        pk = float(self.p_known(np.array([best]), share)[0])
        q, p_other = self.identity([m.score for m in candidates])
        probs = pk * q
        if self.method == "mondrian":
            new_threshold, known_threshold = self.class_quantiles(alpha, share)
        else:
            new_threshold = known_threshold = self.quantile(alpha, share)
        labelled = [
            (1.0 - pk, NEW_INDIVIDUAL),
            *((float(p), m.individual_id) for p, m in zip(probs, candidates, strict=True)),
            (pk * p_other, OTHER_KNOWN),
        ]
        # Ties broken by label: the same scores always give the same set.
        members = sorted(
            (
                item
                for item in labelled
                if 1.0 - item[0]
                <= (new_threshold if item[1] == NEW_INDIVIDUAL else known_threshold) + 1e-12
            ),
            key=lambda item: (-item[0], item[1]),
        )
        return Assessment(
            p_known=pk,
            candidate_ids=tuple(m.individual_id for m in candidates),
            probabilities=tuple(float(p) for p in probs),
            p_other=pk * p_other,
            candidate_set=tuple(label for _, label in members),
            alpha=float(alpha),
            new_share=share,
        )

    # --- storage ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` form (floats rounded to 6 digits)."""
        return {
            "slope": self.slope,
            "intercept": self.intercept,
            "calibration_known_share": self.calibration_known_share,
            "temperature": self.temperature,
            "other_logit": self.other_logit,
            "new_share": self.new_share,
            "best_scores": [round(s, 6) for s in self.best_scores],
            "truth_probability": [
                None if p is None else round(p, 6) for p in self.truth_probability
            ],
            # Written only when not the default, so earlier readers keep reading others.
            **({"method": self.method} if self.method != "marginal" else {}),
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], where: str = "uncertainty"
    ) -> UncertaintyCalibration:
        """Validate and build from :meth:`to_dict` output.

        Raises:
            ConfigError: Unknown or missing keys, or values out of range.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected an object")
        names = {
            "slope",
            "intercept",
            "calibration_known_share",
            "temperature",
            "other_logit",
            "new_share",
            "best_scores",
            "truth_probability",
        }
        if not names <= set(data) <= names | {"method"}:
            raise ConfigError(f"{where}: expected keys {sorted(names)}, got {sorted(data)}")
        if not isinstance(data.get("method", "marginal"), str):
            raise ConfigError(f"{where}: method must be a string")
        for key in ("best_scores", "truth_probability"):
            if not isinstance(data[key], list):
                raise ConfigError(f"{where}: {key} must be a list")
        try:
            return cls(
                slope=data["slope"],
                intercept=data["intercept"],
                calibration_known_share=data["calibration_known_share"],
                temperature=data["temperature"],
                other_logit=data["other_logit"],
                new_share=data["new_share"],
                best_scores=tuple(data["best_scores"]),
                truth_probability=tuple(data["truth_probability"]),
                method=data.get("method", "marginal"),
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc


def _platt(x: np.ndarray, y: np.ndarray, l2: float = 1e-4) -> tuple[float, float]:
    """Logistic regression of ``y`` on ``x`` (Newton's method, a whisper of L2)."""
    design = np.c_[x, np.ones(len(x))]
    beta = np.zeros(2)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ beta, -500, 500)))
        grad = design.T @ (p - y) / len(y) + l2 * beta
        hess = (design * (p * (1 - p))[:, None]).T @ design / len(y) + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(beta[0]), float(beta[1])


def fit_uncertainty(
    candidates: Sequence[Sequence[Match]],
    truths: Sequence[str],
    *,
    new_share: float | None = None,
    method: str = "marginal",
) -> UncertaintyCalibration:
    """Fit the probabilities on held-out queries (ranked candidates and true ids).

    Args:
        candidates: Per query, its ranked candidates (best first; up to :data:`LIST_SIZE`).
        truths: Per query, the true id, or ``"new_individual"``.
        new_share: The default share of new animals expected in use (default: that of
            the calibration queries).
        method: How the conformal sets are calibrated (:data:`SET_METHODS`).

    Raises:
        DataError: With fewer than 10 queries, or without both new and known ones.
    """
    if len(candidates) != len(truths):
        raise DataError("one candidate list per calibration query")
    known = np.array([t != NEW_INDIVIDUAL for t in truths])
    if len(truths) < 10 or known.all() or not known.any():
        raise DataError("uncertainty needs at least 10 calibration queries, new and known")
    best = np.array([c[0].score if c else -1.0 for c in candidates], np.float64)
    slope, intercept = _platt(best, known.astype(np.float64))
    # Identity given known: softmax temperature and the "anyone else" logit, by likelihood.
    rows = [i for i in range(len(truths)) if known[i]]
    width = max([1, *(len(candidates[i]) for i in rows)])
    scores = np.full((len(rows), width), -np.inf)
    truth_col = np.full(len(rows), -1)  # -1: not listed (counts as "other")
    for r, i in enumerate(rows):
        listed = [m.score for m in candidates[i]]
        scores[r, : len(listed)] = listed
        ids = [m.individual_id for m in candidates[i]]
        if truths[i] in ids:
            truth_col[r] = ids.index(truths[i])
    listed_rows = truth_col >= 0
    best_fit: tuple[float, float, float] | None = None
    for temperature in (0.01, 0.015, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2, 0.3):
        z = scores / temperature
        lse = np.logaddexp.reduce(z, axis=1)  # log-sum-exp of the listed candidates
        z_truth = np.where(listed_rows, z[np.arange(len(rows)), np.maximum(truth_col, 0)], 0.0)
        for other in np.linspace(-10.0, 100.0, 221):
            norm = np.logaddexp(lse, other)
            nll = float(-(np.where(listed_rows, z_truth, other) - norm).sum())
            if best_fit is None or nll < best_fit[0]:
                best_fit = (nll, temperature, float(other))
    assert best_fit is not None
    _, temperature, other = best_fit
    truth_p: list[float | None] = []
    for c, t in zip(candidates, truths, strict=True):
        if t == NEW_INDIVIDUAL:
            truth_p.append(None)
            continue
        q, p_other = _identity([m.score for m in c], temperature, other)
        ids = [m.individual_id for m in c]
        truth_p.append(float(q[ids.index(t)]) if t in ids else p_other)
    return UncertaintyCalibration(
        slope=slope,
        intercept=intercept,
        calibration_known_share=float(known.mean()),
        temperature=temperature,
        other_logit=other,
        new_share=float(1.0 - known.mean()) if new_share is None else new_share,
        best_scores=tuple(float(np.clip(b, -1.0, 1.0)) for b in best),
        truth_probability=tuple(truth_p),
        method=method,
    )


def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not (isinstance(alpha, int | float) and 0.0 < alpha < 1.0):
        raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")


def _identity(
    scores: Sequence[float], temperature: float, other_logit: float
) -> tuple[np.ndarray[Any, Any], float]:
    """Softmax over the listed candidates' scores and the "anyone else" logit."""
    z = np.asarray([*(s / temperature for s in scores), other_logit], np.float64)
    z -= z.max()
    e = np.exp(z)
    e /= e.sum()
    return e[:-1], float(e[-1])


def expected_calibration_error(
    probabilities: Sequence[float], outcomes: Sequence[bool], bins: int = 10
) -> tuple[float, list[dict[str, float]]]:
    """ECE of probabilities against outcomes, and the reliability table (equal-width bins).

    Returns:
        ``(ece, rows)``; each row has ``low``, ``high``, ``n``, ``mean_probability`` and
        ``observed`` (the share of outcomes that were true).
    """
    p = np.asarray(probabilities, np.float64)
    y = np.asarray(outcomes, bool)
    if len(p) != len(y) or not len(p):
        raise DataError("one outcome per probability, and at least one")
    idx = np.minimum((p * bins).astype(int), bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        mask = idx == b
        if not mask.any():
            continue
        mean_p, observed = float(p[mask].mean()), float(y[mask].mean())
        ece += abs(mean_p - observed) * mask.mean()
        rows.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "n": int(mask.sum()),
                "mean_probability": mean_p,
                "observed": observed,
            }
        )
    return float(ece), rows


def evaluate_uncertainty(
    calibration: UncertaintyCalibration,
    candidates: Sequence[Sequence[Match]],
    truths: Sequence[str],
    *,
    alphas: Sequence[float] = (0.1, 0.2),
    new_share: float | None = None,
) -> dict[str, Any]:
    """How calibrated the probabilities are on labelled queries, and how the sets cover.

    Args:
        calibration: The fitted calibration.
        candidates: Per query, its ranked candidates (up to :data:`LIST_SIZE`).
        truths: Per query, the true id or ``"new_individual"``.
        alphas: Miscoverage levels to measure.
        new_share: Share of new animals assumed (default: the calibration's).

    Returns:
        ``ece`` of ``p_known`` and its ``reliability`` table, ``mean_p_known``,
        ``share_known``, and per alpha the set ``coverage`` (overall, ``coverage_known``,
        ``coverage_new``) and ``mean_size``.
    """
    best = np.array([c[0].score if c else -1.0 for c in candidates])
    known = np.array([t != NEW_INDIVIDUAL for t in truths])
    p = calibration.p_known(best, new_share)
    ece, table = expected_calibration_error(p.tolist(), known.tolist())
    sets: dict[str, dict[str, float | None]] = {}
    for alpha in alphas:
        hits, sizes = [], []
        for c, t in zip(candidates, truths, strict=True):
            a = calibration.assess(c, alpha=alpha, new_share=new_share)
            listed = [m.individual_id for m in c]
            label = t if t == NEW_INDIVIDUAL or t in listed else OTHER_KNOWN
            hits.append(label in a.candidate_set)
            sizes.append(len(a.candidate_set))
        h = np.array(hits)
        sets[str(alpha)] = {
            "target": 1.0 - alpha,
            "coverage": float(h.mean()),
            "coverage_known": float(h[known].mean()) if known.any() else None,
            "coverage_new": float(h[~known].mean()) if (~known).any() else None,
            "mean_size": float(np.mean(sizes)),
        }
    return {
        "new_share": calibration.new_share if new_share is None else new_share,
        "ece": ece,
        "mean_p_known": float(p.mean()),
        "share_known": float(known.mean()),
        "reliability": table,
        "sets": sets,
    }
