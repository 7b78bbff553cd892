"""Typed results: :class:`GateResult`, :class:`Match` and :class:`Prediction`.

All are frozen dataclasses whose ``to_dict()`` output is JSON-serialisable and whose
``from_dict()`` rebuilds an equal object, so results can be written as JSON lines and read
back (for example by ``ecomarine export-dwc``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Final, Literal, get_args

from .errors import ConfigError, DataError

__all__ = [
    "CANDIDATE_SOURCES",
    "EMBEDDING_KINDS",
    "REJECTION_REASONS",
    "SIGHTING_REJECTION_REASONS",
    "CandidateSource",
    "EmbeddingKind",
    "GateResult",
    "Match",
    "PhotoEvidence",
    "Prediction",
    "SightingPrediction",
    "as_candidate_source",
    "embedding_kind",
    "rejection_text",
]

#: ``"embedding"``: the trained (neck) embedding; ``"features"``: the backbone's general
#: pooled features, which transfer better to species the model was not trained on.
EmbeddingKind = Literal["embedding", "features"]
EMBEDDING_KINDS: Final[tuple[EmbeddingKind, ...]] = get_args(EmbeddingKind)


def embedding_kind(value: object, where: str = "embedding kind") -> EmbeddingKind:
    """``value`` as an :data:`EmbeddingKind`, checked (for values read from files or options).

    Raises:
        ConfigError: When it is not one of :data:`EMBEDDING_KINDS`.
    """
    for kind in EMBEDDING_KINDS:
        if value == kind:
            return kind
    raise ConfigError(f"{where} must be one of {', '.join(EMBEDDING_KINDS)}; got {value!r}")


#: Where a prediction's candidates come from: ``"gallery"``, a catalogue search (an
#: identification of the user's animals, with an open-set decision); ``"head"``, the
#: model's own classifier over the individuals it was trained on (a hint, never an
#: identification: ``individual_id`` stays ``None``).
CandidateSource = Literal["gallery", "head"]
CANDIDATE_SOURCES: Final[tuple[CandidateSource, ...]] = get_args(CandidateSource)

#: Why a photo was not identified. ``None`` on a prediction means it was accepted.
REJECTION_REASONS: Final = (
    "not_cetacean",
    "unreadable_image",
    "image_too_large",
)


def _check_keys(cls: type[Any], data: Mapping[str, Any]) -> None:
    if not isinstance(data, Mapping):
        raise DataError(f"{cls.__name__}.from_dict expects a mapping, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise DataError(f"{cls.__name__}: unknown field(s) {unknown}")
    missing = sorted(
        f.name
        for f in fields(cls)
        if f.name not in data and f.default is MISSING and f.default_factory is MISSING
    )
    if missing:
        raise DataError(f"{cls.__name__}: missing field(s) {missing}")


def _finite_or_none(value: float | None) -> float | None:
    # JSON has no NaN/inf; keep to_dict() output strictly valid JSON.
    if value is None or math.isfinite(value):
        return value
    return None


@dataclass(frozen=True)
class GateResult:
    """The gate's verdict on one image.

    Attributes:
        score: Probability-like score in [0, 1] that the photo shows a cetacean.
        is_cetacean: ``score >= threshold``.
        threshold: The decision threshold used.
        backend: Which gate produced the score (``"embedded"``, ``"clip"``).
        looks_like: For a rejected photo, the non-cetacean kind it most resembles (the
            embedded gate: ``"pinniped"``, ``"boat"``, ``"empty_water_or_shore"``, ...; the
            CLIP gate: its best-matching negative prompt); ``None`` otherwise.
    """

    score: float
    is_cetacean: bool
    threshold: float
    backend: str
    looks_like: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateResult:
        """Rebuild from :meth:`to_dict` output."""
        _check_keys(cls, data)
        return cls(
            score=float(data["score"]),
            is_cetacean=bool(data["is_cetacean"]),
            threshold=float(data["threshold"]),
            backend=str(data["backend"]),
            looks_like=None if data.get("looks_like") is None else str(data["looks_like"]),
        )


@dataclass(frozen=True)
class Match:
    """One candidate individual for a query photo.

    Attributes:
        individual_id: The known individual's id.
        score: Similarity (cosine for gallery matches, probability for head matches).
        species: The individual's species label, when known.
        image_id: The gallery image that supports the match best, when from a gallery.
        probability: Calibrated probability that the animal is this individual (see
            :mod:`ecomarine.uncertainty`), when the model carries calibration data.
    """

    individual_id: str
    score: float
    species: str | None = None
    image_id: str | None = None
    probability: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Match:
        """Rebuild from :meth:`to_dict` output."""
        _check_keys(cls, data)
        return cls(
            individual_id=str(data["individual_id"]),
            score=float(data["score"]),
            species=None if data.get("species") is None else str(data["species"]),
            image_id=None if data.get("image_id") is None else str(data["image_id"]),
            probability=None if data.get("probability") is None else float(data["probability"]),
        )


@dataclass(frozen=True)
class Prediction:
    """Everything ecomarine concluded about one photo.

    Attributes:
        source: The photo's path or a short description of an in-memory source.
        is_cetacean: Whether the gate accepted the photo.
        gate_score: The gate's score, ``None`` when the image could not be read.
        species: Predicted species label, when known.
        species_score: Confidence of the species vote in [0, 1].
        individual_id: Best matching catalogued individual; ``None`` for a new
            individual, a rejected photo, or when no gallery was searched.
        is_new_individual: True when the best match scored under the open-set threshold.
        candidates: Ranked candidate individuals, best first.
        candidate_source: Where ``candidates`` come from (see :data:`CandidateSource`);
            ``None`` when there are none.
        new_individual_threshold: The open-set threshold that was applied.
        rejection_reason: ``None`` when accepted, else one of :data:`REJECTION_REASONS`.
        error: Human-readable detail for a rejection caused by an error.
        sha256: SHA-256 of the image file's bytes, when the source was a file or bytes.
        model_id: Identifier of the model that made the prediction.
        p_known: Calibrated probability that the animal is in the catalogue (``None``
            when the model has no calibration data: the threshold alone decides).
        candidate_set: Conformal set that contains the true answer with probability at
            least ``1 - alpha``: individual ids, ``"new_individual"``, and
            ``"other_known"`` (someone in the catalogue not listed).
        alpha: The set's miscoverage.
        looks_like: For a ``not_cetacean`` rejection, what the gate thinks the photo shows
            instead (see :attr:`GateResult.looks_like`).
        model_license: Licence of the model's weights, when its publisher states one
            (e.g. ``"cc-by-nc-4.0"``); Darwin Core metadata names it.
    """

    source: str | None
    is_cetacean: bool
    gate_score: float | None
    species: str | None = None
    species_score: float | None = None
    individual_id: str | None = None
    is_new_individual: bool = False
    candidates: tuple[Match, ...] = field(default_factory=tuple)
    new_individual_threshold: float | None = None
    rejection_reason: str | None = None
    error: str | None = None
    sha256: str | None = None
    model_id: str | None = None
    candidate_source: CandidateSource | None = None
    p_known: float | None = None
    candidate_set: tuple[str, ...] | None = None
    alpha: float | None = None
    looks_like: str | None = None
    model_license: str | None = None

    def __post_init__(self) -> None:
        if self.candidate_set is not None:
            object.__setattr__(self, "candidate_set", tuple(str(x) for x in self.candidate_set))
        if self.candidate_source is not None and self.candidate_source not in CANDIDATE_SOURCES:
            raise DataError(
                f"unknown candidate_source {self.candidate_source!r}; "
                f"expected one of {CANDIDATE_SOURCES}"
            )
        if self.rejection_reason is not None and self.rejection_reason not in REJECTION_REASONS:
            raise DataError(
                f"unknown rejection_reason {self.rejection_reason!r}; "
                f"expected one of {REJECTION_REASONS}"
            )
        # Accept any sequence of matches but store an immutable tuple.
        object.__setattr__(self, "candidates", tuple(self.candidates))

    @property
    def accepted(self) -> bool:
        """True when the photo passed the gate and was identified."""
        return self.rejection_reason is None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (``candidates`` as a list of dicts)."""
        out = asdict(self)
        out["candidates"] = [m.to_dict() for m in self.candidates]
        out["candidate_set"] = None if self.candidate_set is None else list(self.candidate_set)
        for key in ("gate_score", "species_score", "new_individual_threshold", "p_known"):
            out[key] = _finite_or_none(out[key])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Prediction:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            DataError: On unknown or missing fields or malformed candidates.
        """
        _check_keys(cls, data)

        def opt_float(key: str) -> float | None:
            value = data.get(key)
            return None if value is None else float(value)

        def opt_str(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        candidates = data.get("candidates", [])
        if not isinstance(candidates, list | tuple):
            raise DataError("Prediction: 'candidates' must be a list")
        try:
            return cls(
                source=opt_str("source"),
                is_cetacean=bool(data["is_cetacean"]),
                gate_score=opt_float("gate_score"),
                species=opt_str("species"),
                species_score=opt_float("species_score"),
                individual_id=opt_str("individual_id"),
                is_new_individual=bool(data.get("is_new_individual", False)),
                candidates=tuple(Match.from_dict(c) for c in candidates),
                new_individual_threshold=opt_float("new_individual_threshold"),
                rejection_reason=opt_str("rejection_reason"),
                error=opt_str("error"),
                sha256=opt_str("sha256"),
                model_id=opt_str("model_id"),
                candidate_source=as_candidate_source(data.get("candidate_source")),
                p_known=opt_float("p_known"),
                candidate_set=_str_tuple(data.get("candidate_set"), "candidate_set"),
                alpha=opt_float("alpha"),
                looks_like=opt_str("looks_like"),
                model_license=opt_str("model_license"),
            )
        except (TypeError, ValueError, OverflowError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"Prediction: malformed value: {exc}") from exc


def _str_tuple(value: object, key: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(isinstance(x, str) for x in value):
        raise DataError(f"Prediction: {key!r} must be a list of strings or null")
    return tuple(value)


def as_candidate_source(value: object) -> CandidateSource | None:
    """``value`` as a :data:`CandidateSource` (``None`` or ``""``: none), checked.

    Raises:
        DataError: For any other value.
    """
    for source in CANDIDATE_SOURCES:
        if value == source:
            return source
    if value is None or value == "":
        return None
    raise DataError(f"unknown candidate_source {value!r}; expected one of {CANDIDATE_SOURCES}")


#: Why a sighting was not identified. ``None`` on a sighting means it was.
SIGHTING_REJECTION_REASONS: Final = ("empty_sighting", "no_accepted_photo")


@dataclass(frozen=True)
class PhotoEvidence:
    """Which catalogue photo matched one photo of a sighting, for one candidate.

    Attributes:
        photo: Position of the photo in the sighting.
        image_id: The candidate's gallery image that matched it best.
        score: Their cosine.
    """

    photo: int
    image_id: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PhotoEvidence:
        """Rebuild from :meth:`to_dict` output."""
        _check_keys(cls, data)
        return cls(int(data["photo"]), str(data["image_id"]), float(data["score"]))


@dataclass(frozen=True)
class SightingPrediction:
    """Everything ecomarine concluded about one sighting: several photos of one animal.

    Attributes:
        sighting_id: The caller's name for the sighting.
        individual_id: The catalogued individual it was identified as, else ``None``.
        is_new_individual: True when the best aggregated score is under the sighting
            threshold.
        candidates: Ranked individuals, best first; ``score`` is the aggregated score,
            on the scale of :attr:`new_individual_threshold`.
        species: The matched individual's species, or a clear vote (see
            :func:`~ecomarine.species_vote.vote_species`).
        species_score: Share of the vote that species got.
        photos: The per-photo predictions, in input order, gate rejections included.
        new_individual_threshold: The sighting threshold applied (``None``: never new).
        aggregation: How the photos' scores were combined (``"top3"``, ...).
        candidate_source: ``"gallery"`` or ``"head"`` (see :class:`Prediction`).
        evidence: Per candidate id, which catalogue photo matched each accepted photo
            (best photo first).
        rejection_reason: ``None`` when identified, else one of
            :data:`SIGHTING_REJECTION_REASONS`.
        model_id: Identifier of the model that made the prediction.
        p_known: Calibrated probability that the animal is in the catalogue (``None``
            without calibration data for the aggregation used).
        candidate_set: Conformal set holding the true answer with probability at least
            ``1 - alpha`` (see :class:`Prediction`).
        alpha: The set's miscoverage.
        model_license: Licence of the model's weights (see :class:`Prediction`).
    """

    sighting_id: str
    individual_id: str | None = None
    is_new_individual: bool = False
    candidates: tuple[Match, ...] = field(default_factory=tuple)
    species: str | None = None
    species_score: float | None = None
    photos: tuple[Prediction, ...] = field(default_factory=tuple)
    new_individual_threshold: float | None = None
    aggregation: str | None = None
    candidate_source: CandidateSource | None = None
    evidence: Mapping[str, tuple[PhotoEvidence, ...]] = field(default_factory=dict)
    rejection_reason: str | None = None
    model_id: str | None = None
    p_known: float | None = None
    candidate_set: tuple[str, ...] | None = None
    alpha: float | None = None
    model_license: str | None = None

    def __post_init__(self) -> None:
        if self.candidate_set is not None:
            object.__setattr__(self, "candidate_set", tuple(str(x) for x in self.candidate_set))
        if (
            self.rejection_reason is not None
            and self.rejection_reason not in SIGHTING_REJECTION_REASONS
        ):
            raise DataError(
                f"unknown sighting rejection_reason {self.rejection_reason!r}; "
                f"expected one of {SIGHTING_REJECTION_REASONS}"
            )
        object.__setattr__(self, "candidates", tuple(self.candidates))
        object.__setattr__(self, "photos", tuple(self.photos))
        object.__setattr__(
            self, "evidence", {str(k): tuple(v) for k, v in dict(self.evidence).items()}
        )
        object.__setattr__(self, "candidate_source", as_candidate_source(self.candidate_source))

    @property
    def accepted(self) -> bool:
        """True when at least one photo passed the gate and the sighting was identified."""
        return self.rejection_reason is None

    @property
    def accepted_photos(self) -> tuple[Prediction, ...]:
        """The photos that voted (those the gate accepted)."""
        return tuple(p for p in self.photos if p.accepted)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (photos and candidates as lists of dicts)."""
        return {
            "sighting_id": self.sighting_id,
            "individual_id": self.individual_id,
            "is_new_individual": self.is_new_individual,
            "candidates": [m.to_dict() for m in self.candidates],
            "species": self.species,
            "species_score": _finite_or_none(self.species_score),
            "photos": [p.to_dict() for p in self.photos],
            "new_individual_threshold": _finite_or_none(self.new_individual_threshold),
            "aggregation": self.aggregation,
            "candidate_source": self.candidate_source,
            "evidence": {k: [e.to_dict() for e in v] for k, v in self.evidence.items()},
            "rejection_reason": self.rejection_reason,
            "model_id": self.model_id,
            "p_known": _finite_or_none(self.p_known),
            "candidate_set": None if self.candidate_set is None else list(self.candidate_set),
            "alpha": self.alpha,
            "model_license": self.model_license,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SightingPrediction:
        """Rebuild from :meth:`to_dict` output.

        Raises:
            DataError: On unknown or missing fields or malformed values.
        """
        _check_keys(cls, data)
        for key in ("candidates", "photos"):
            if not isinstance(data.get(key, []), list | tuple):
                raise DataError(f"SightingPrediction: {key!r} must be a list")
        evidence = data.get("evidence") or {}
        if not isinstance(evidence, Mapping):
            raise DataError("SightingPrediction: 'evidence' must be an object")

        def opt(key: str) -> Any:
            return data.get(key)

        try:
            return cls(
                sighting_id=str(data["sighting_id"]),
                individual_id=None if opt("individual_id") is None else str(opt("individual_id")),
                is_new_individual=bool(data.get("is_new_individual", False)),
                candidates=tuple(Match.from_dict(c) for c in data.get("candidates", [])),
                species=None if opt("species") is None else str(opt("species")),
                species_score=None if opt("species_score") is None else float(opt("species_score")),
                photos=tuple(Prediction.from_dict(p) for p in data.get("photos", [])),
                new_individual_threshold=None
                if opt("new_individual_threshold") is None
                else float(opt("new_individual_threshold")),
                aggregation=None if opt("aggregation") is None else str(opt("aggregation")),
                candidate_source=as_candidate_source(opt("candidate_source")),
                evidence={
                    str(k): tuple(PhotoEvidence.from_dict(e) for e in v)
                    for k, v in evidence.items()
                },
                rejection_reason=None
                if opt("rejection_reason") is None
                else str(opt("rejection_reason")),
                model_id=None if opt("model_id") is None else str(opt("model_id")),
                p_known=None if opt("p_known") is None else float(opt("p_known")),
                candidate_set=_str_tuple(opt("candidate_set"), "candidate_set"),
                alpha=None if opt("alpha") is None else float(opt("alpha")),
                model_license=None if opt("model_license") is None else str(opt("model_license")),
            )
        except (TypeError, ValueError, OverflowError) as exc:
            if isinstance(exc, DataError):
                raise
            raise DataError(f"SightingPrediction: malformed value: {exc}") from exc


def rejection_text(record: Prediction | SightingPrediction) -> str:
    """``"rejected: <reason>"``, with what the gate thought the photo showed, when it said.

    For a record with a ``rejection_reason`` (the CLI's verdict, Darwin Core remarks).
    """
    looks = getattr(record, "looks_like", None)  # photos only: sightings have no verdict of it
    return f"rejected: {record.rejection_reason}" + (f" (looks like {looks})" if looks else "")
