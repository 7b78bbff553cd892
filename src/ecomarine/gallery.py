"""The :class:`Gallery`: a catalogue of known individuals, searched by embedding.

A gallery holds unit-norm vectors and one record per image (individual id, species,
free JSON metadata); it knows nothing of networks. It answers *which individuals* (not
images) are closest to a query, decides *new individual* under an open-set threshold,
votes on species, and saves/loads atomically with the fingerprint of the model that made
its vectors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from ._atomic import atomic_write_bytes, atomic_write_text
from ._files import read_regular
from ._text import parse_json
from .calibration import NewIndividualCalibration, calibrate_open_set
from .errors import ConfigError, GalleryError
from .index import INDEX_KINDS, IndexKind, VectorIndex
from .metrics import NEW_INDIVIDUAL
from .search import (
    AGGREGATIONS,
    Aggregation,
    individual_rows,
    rank_individuals,
    rank_individuals_for_set,
)
from .species_vote import vote_species
from .types import EmbeddingKind, Match, PhotoEvidence, embedding_kind

__all__ = ["Aggregation", "Gallery", "GalleryMergeReport", "Identification", "IndividualSummary"]

_Arr = np.ndarray[Any, Any]
_F32 = np.ndarray[Any, np.dtype[np.float32]]

logger = logging.getLogger(__name__)

#: Version 2: ``new_individual_threshold`` is an explicit override (``null``: the model's).
#: Version 1 galleries stored a copy of the model's threshold; it loads as an override.
GALLERY_FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
MANIFEST_NAME = "gallery.json"
LOCK_NAME = ".lock"


@dataclass(frozen=True)
class Identification:
    """The gallery's answer for one query.

    Attributes:
        individual_id: The best match, or ``None`` for a new individual.
        is_new_individual: True when the best score is under the threshold.
        candidates: Ranked individuals, best first.
        species: The matched individual's species; for a new individual, the
            score-weighted vote over the candidates, only when the gallery holds several
            species and the vote is clear (:func:`~ecomarine.species_vote.vote_species`).
        species_score: Share of the vote that species got.
        threshold: The open-set threshold applied (``None``: never new).
        evidence: For a sighting (:meth:`Gallery.identify_sightings`), per candidate id,
            which gallery image matched each query photo; empty for a single photo.
        ranked: The longer ranking asked for with ``list_size`` (best first; the first
            ``top_k`` are :attr:`candidates`), from the same search; empty otherwise.
    """

    individual_id: str | None
    is_new_individual: bool
    candidates: tuple[Match, ...]
    species: str | None
    species_score: float | None
    threshold: float | None
    evidence: Mapping[str, tuple[PhotoEvidence, ...]] = field(default_factory=dict)
    ranked: tuple[Match, ...] = ()


@dataclass(frozen=True)
class IndividualSummary:
    """One catalogued individual, as ``ecomarine gallery list`` shows it.

    Attributes:
        individual_id: The id.
        photos: How many catalogue photos it has.
        species: Its recorded species (the most frequent label), if any.
        first_date: Earliest ``date`` in its photos' metadata (ISO text), if any.
        last_date: Latest ``date`` in its photos' metadata, if any.
        encounters: How many distinct ``encounter`` values its photos carry.
    """

    individual_id: str
    photos: int
    species: str | None
    first_date: str | None
    last_date: str | None
    encounters: int


@dataclass(frozen=True)
class GalleryMergeReport:
    """What :meth:`Gallery.merge_from` did.

    Attributes:
        added: Photos added.
        duplicate_photos: Photos skipped because the same image content (SHA-256) is
            already in the gallery; ``(incoming image id, existing image id)`` pairs.
        relabelled_conflicts: Duplicate photos whose two copies name different
            individuals: ``(sha256, existing individual, incoming individual)``.
        shared_individuals: Individual ids present in both galleries (now one animal).
        species_conflicts: Shared ids whose species differ: ``(id, ours, theirs)``.
        renamed_image_ids: Incoming image ids that clashed and were given fresh ones.
    """

    added: int
    duplicate_photos: tuple[tuple[str, str], ...]
    relabelled_conflicts: tuple[tuple[str, str, str], ...]
    shared_individuals: tuple[str, ...]
    species_conflicts: tuple[tuple[str, str, str], ...]
    renamed_image_ids: int


@dataclass
class _Records:
    image_ids: list[str] = field(default_factory=list)
    individual_ids: list[str] = field(default_factory=list)
    species: list[str | None] = field(default_factory=list)
    metadata: list[dict[str, Any]] = field(default_factory=list)


class Gallery:
    """A catalogue of known individuals.

    Args:
        fingerprint: Fingerprint of the model (and embedding kind) that made the vectors.
        embedding_kind: ``"embedding"`` or ``"features"``; a gallery holds one kind.
        new_individual_threshold: An explicit override of the open-set threshold (the
            best-match cosine under which a query is new), e.g. calibrated on this
            catalogue. ``None`` (the default): a :class:`~ecomarine.pipeline.Pipeline`
            applies its model's calibrated threshold, which follows the model when it is
            recalibrated; a gallery used alone then never declares a new individual.
        index_kind: ``"flat"`` (exact), or ``"hnsw"``, ``"ivf"``, ``"sq8"`` (approximate,
            FAISS; see :mod:`ecomarine.index`).
        use_faiss: ``None``: FAISS when installed; False: NumPy.
        aggregation: ``"max"`` (best image) or ``"mean"`` (mean cosine over the
            individual's images).

    Example:
        ```python
        g = Gallery()
        g.add(np.eye(3, dtype=np.float32), ["a", "b", "c"])  # image ids img-000000, ...
        best = g.search(np.eye(3, dtype=np.float32)[:1], top_k=1)[0]
        assert best[0].individual_id == "a"
        ```
    """

    def __init__(
        self,
        *,
        fingerprint: str | None = None,
        embedding_kind: EmbeddingKind = "embedding",
        new_individual_threshold: float | None = None,
        index_kind: IndexKind = "flat",
        use_faiss: bool | None = None,
        aggregation: Aggregation = "max",
        model_name: str | None = None,
    ) -> None:
        if aggregation not in AGGREGATIONS:
            raise GalleryError(f"aggregation must be 'max' or 'mean', got {aggregation!r}")
        _check_index_kind(index_kind)
        self.fingerprint = fingerprint
        self.embedding_kind: EmbeddingKind = embedding_kind
        self.new_individual_threshold = new_individual_threshold
        self.index_kind: IndexKind = index_kind
        self.use_faiss = use_faiss
        self.aggregation: Aggregation = aggregation
        self.model_name = model_name
        self._emb = np.zeros((0, 0), np.float32)
        self._rec = _Records()
        self._index: VectorIndex | None = None
        self._species_cache: dict[str, str | None] = {}
        self._species_count: int | None = None
        self._label_cache: tuple[list[str], _Arr] | None = None
        self._next_id = 0

    # --- contents -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._rec.image_ids)

    def __repr__(self) -> str:
        return (
            f"Gallery({len(self)} images, {len(self.individuals())} individuals, "
            f"dim={self.dim}, kind={self.embedding_kind!r})"
        )

    @property
    def dim(self) -> int | None:
        """Embedding dimension, or ``None`` while empty."""
        return self._emb.shape[1] if len(self) else None

    @property
    def embeddings(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        """A read-only view of the ``(N, D)`` vectors."""
        view = self._emb.view()
        view.flags.writeable = False
        return view

    def individuals(self) -> list[str]:
        """Sorted unique individual ids."""
        return sorted(set(self._rec.individual_ids))

    def records(self) -> list[dict[str, Any]]:
        """One dict per image: ``image_id``, ``individual_id``, ``species``, ``metadata``."""
        r = self._rec
        return [
            {"image_id": i, "individual_id": ind, "species": sp, "metadata": dict(md)}
            for i, ind, sp, md in zip(
                r.image_ids, r.individual_ids, r.species, r.metadata, strict=True
            )
        ]

    def species_of(self, individual_id: str) -> str | None:
        """The species recorded for an individual (the most frequent, if several)."""
        votes: dict[str, int] = defaultdict(int)
        for ind, sp in zip(self._rec.individual_ids, self._rec.species, strict=True):
            if ind == individual_id and sp:
                votes[sp] += 1
        return max(votes, key=lambda s: votes[s]) if votes else None

    def add(
        self,
        embeddings: np.ndarray[Any, Any],
        individual_ids: Sequence[str],
        species: Sequence[str | None] | str | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        image_ids: Sequence[str] | None = None,
    ) -> list[str]:
        """Add images of known individuals; return their image ids.

        Args:
            embeddings: ``(N, D)`` vectors (normalised here if they are not).
            individual_ids: One id per row.
            species: One label per row, or one for all rows.
            metadata: Optional JSON-serialisable dict per row (source path, encounter,
                date, latitude/longitude, ...).
            image_ids: Optional unique ids; generated otherwise.

        Raises:
            GalleryError: On mismatched lengths or dimensions, non-finite vectors,
                duplicate image ids, or metadata that is not JSON-serialisable.
        """
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(individual_ids):
            raise GalleryError(
                f"embeddings shape {emb.shape} does not match {len(individual_ids)} ids"
            )
        if emb.shape[0] == 0:
            return []
        if self.dim is not None and emb.shape[1] != self.dim:
            raise GalleryError(f"embedding dimension {emb.shape[1]} != gallery's {self.dim}")
        if not np.all(np.isfinite(emb)):
            raise GalleryError("embeddings contain NaN or infinite values")
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        if np.any(norms == 0):
            raise GalleryError("embeddings contain an all-zero vector")
        # Renormalise only rows that need it, so a save/load round trip is bit-exact.
        emb = np.where(np.abs(norms - 1.0) > 1e-6, emb / norms, emb).astype(np.float32)
        n = emb.shape[0]
        ids = [str(x) for x in individual_ids]
        if any(not x or x == NEW_INDIVIDUAL for x in ids):
            raise GalleryError(f"individual ids must be non-empty and not {NEW_INDIVIDUAL!r}")
        sp = [species] * n if species is None or isinstance(species, str) else list(species)
        md = [dict(m or {}) for m in (metadata or [None] * n)]
        if len(sp) != n or len(md) != n:
            raise GalleryError("species and metadata need one entry per embedding")
        try:
            json.dumps(md)
        except (TypeError, ValueError) as exc:
            raise GalleryError(f"metadata must be JSON-serialisable: {exc}") from exc
        new_ids = [str(x) for x in image_ids] if image_ids is not None else self._fresh_ids(n)
        if len(new_ids) != n:
            raise GalleryError("image_ids needs one entry per embedding")
        clash = set(new_ids) & set(self._rec.image_ids) or (
            len(set(new_ids)) != n and {x for x in new_ids if new_ids.count(x) > 1}
        )
        if clash:
            raise GalleryError(f"duplicate image ids: {sorted(clash)[:5]}")
        self._emb = emb if not len(self) else np.concatenate([self._emb, emb])
        self._rec.image_ids += new_ids
        self._rec.individual_ids += ids
        self._rec.species += [None if s is None else str(s) for s in sp]
        self._rec.metadata += md
        self._changed()
        return new_ids

    def _fresh_ids(self, n: int, avoid: Set[str] = frozenset()) -> list[str]:
        taken = set(self._rec.image_ids) | set(avoid)
        out: list[str] = []
        while len(out) < n:
            candidate = f"img-{self._next_id:06d}"
            self._next_id += 1
            if candidate not in taken:
                out.append(candidate)
        return out

    def remove(
        self, *, individual_id: str | None = None, image_ids: Sequence[str] | None = None
    ) -> int:
        """Remove all images of an individual, or the given images; return how many.

        Raises:
            GalleryError: When neither or both selectors are given, or nothing matches.
        """
        if (individual_id is None) == (image_ids is None):
            raise GalleryError("pass exactly one of individual_id= or image_ids=")
        if individual_id is not None:
            keep = [ind != individual_id for ind in self._rec.individual_ids]
        else:
            wanted = set(image_ids or [])
            unknown = wanted - set(self._rec.image_ids)
            if unknown:
                raise GalleryError(f"unknown image ids: {sorted(unknown)[:5]}")
            keep = [i not in wanted for i in self._rec.image_ids]
        removed = keep.count(False)
        if removed == 0:
            raise GalleryError(f"no images of individual {individual_id!r}")
        mask = np.array(keep, dtype=bool)
        self._emb = self._emb[mask] if mask.any() else np.zeros((0, 0), np.float32)
        r = self._rec
        self._rec = _Records(
            [x for x, k in zip(r.image_ids, keep, strict=True) if k],
            [x for x, k in zip(r.individual_ids, keep, strict=True) if k],
            [x for x, k in zip(r.species, keep, strict=True) if k],
            [x for x, k in zip(r.metadata, keep, strict=True) if k],
        )
        self._changed()
        return removed

    def rename(self, old: str, new: str) -> int:
        """Rename an individual (fails if ``new`` already exists: use :meth:`merge`)."""
        if new in set(self._rec.individual_ids):
            raise GalleryError(f"individual {new!r} exists; use merge() to combine")
        return self.merge([old], into=new)

    def merge(self, individual_ids: Sequence[str], *, into: str) -> int:
        """Relabel the images of several individuals as ``into``; return how many changed."""
        sources = set(individual_ids)
        missing = sources - set(self._rec.individual_ids)
        if missing:
            raise GalleryError(f"unknown individual(s): {sorted(missing)}")
        if not into or into == NEW_INDIVIDUAL:
            raise GalleryError("target id must be non-empty and not 'new_individual'")
        changed = 0
        for i, ind in enumerate(self._rec.individual_ids):
            if ind in sources and ind != into:
                self._rec.individual_ids[i] = into
                changed += 1
        self._changed()
        return changed

    # --- search -------------------------------------------------------------------------

    def use_index(self, kind: IndexKind) -> None:
        """Search with another index kind from now on (saved with the gallery).

        Raises:
            GalleryError: For an unknown kind.
        """
        _check_index_kind(kind)
        self.index_kind = kind
        self._index = None

    def _get_index(self) -> VectorIndex:
        if self._index is None:
            self._index = VectorIndex(self._emb, kind=self.index_kind, use_faiss=self.use_faiss)
        return self._index

    def _check_queries(self, queries: _Arr) -> _F32:
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if q.ndim != 2:
            raise GalleryError(f"queries must be (Q, D) vectors, got shape {q.shape}")
        if self.dim is not None and q.shape[1] != self.dim:
            raise GalleryError(f"query dimension {q.shape[1]} != gallery's {self.dim}")
        if not np.all(np.isfinite(q)):
            raise GalleryError("query vectors contain NaN or infinite values")
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        return (q / np.where(norms == 0, 1.0, norms)).astype(np.float32)

    def _labels(self) -> tuple[list[str], _Arr]:
        """Sorted individual ids and each image's row among them (cached)."""
        if self._label_cache is None:
            self._label_cache = individual_rows(self._rec.individual_ids)
        return self._label_cache

    def search(
        self,
        query_embeddings: np.ndarray[Any, Any],
        top_k: int = 5,
        *,
        aggregation: Aggregation | None = None,
    ) -> list[list[Match]]:
        """The ``top_k`` closest *individuals* for each query, best first.

        Each :class:`~ecomarine.types.Match` carries the individual's score (max or mean
        cosine over its images), species, and the best supporting image id.
        """
        q = self._check_queries(query_embeddings)
        if not len(self):
            return [[] for _ in range(len(q))]
        names, rows = self._labels()
        hits = rank_individuals(
            self._get_index(), rows, q, top_k, aggregation=aggregation or self.aggregation
        )
        return [
            [
                Match(
                    names[h.individual],
                    h.score,
                    self.species_of_cached(names[h.individual]),
                    self._rec.image_ids[h.image],
                )
                for h in row
            ]
            for row in hits
        ]

    def species_of_cached(self, individual_id: str) -> str | None:
        """Like :meth:`species_of`, memoised until the gallery changes."""
        if individual_id not in self._species_cache:
            self._species_cache[individual_id] = self.species_of(individual_id)
        return self._species_cache[individual_id]

    def _changed(self) -> None:
        self._index = None
        self._label_cache = None
        self._species_count = None
        self._species_cache.clear()

    def species_count(self) -> int:
        """How many distinct species labels the gallery holds (memoised)."""
        if self._species_count is None:
            self._species_count = len({sp for sp in self._rec.species if sp})
        return self._species_count

    def known_sha256(self) -> dict[str, str]:
        """Image content hash -> image id, for the photos whose metadata records one.

        Photos enrolled by a :class:`~ecomarine.pipeline.Pipeline` from files or bytes
        carry ``metadata["sha256"]``; galleries built before version 0.1.0 do not, and
        their photos cannot be recognised as duplicates.
        """
        out: dict[str, str] = {}
        for img, md in zip(self._rec.image_ids, self._rec.metadata, strict=True):
            digest = md.get("sha256")
            if isinstance(digest, str) and digest not in out:
                out[digest] = img
        return out

    def summaries(self) -> list[IndividualSummary]:
        """One :class:`IndividualSummary` per individual, sorted by id."""
        photos: dict[str, int] = defaultdict(int)
        dates: dict[str, list[str]] = defaultdict(list)
        encounters: dict[str, set[str]] = defaultdict(set)
        for ind, md in zip(self._rec.individual_ids, self._rec.metadata, strict=True):
            photos[ind] += 1
            if isinstance(md.get("date"), str) and md["date"]:
                dates[ind].append(md["date"])
            if md.get("encounter") is not None:
                encounters[ind].add(str(md["encounter"]))
        return [
            IndividualSummary(
                individual_id=ind,
                photos=photos[ind],
                species=self.species_of_cached(ind),
                first_date=min(dates[ind]) if dates[ind] else None,
                last_date=max(dates[ind]) if dates[ind] else None,
                encounters=len(encounters[ind]),
            )
            for ind in sorted(photos)
        ]

    def image_ids_for_sources(self, sources: Sequence[str]) -> list[str]:
        """Image ids whose recorded ``source`` is one of ``sources``.

        A source matches the recorded path exactly, or its file name when the name is
        given alone (``IMG_0001.jpg`` matches ``day1/IMG_0001.jpg``).

        Raises:
            GalleryError: When a source matches no photo, or a bare file name matches
                photos in several folders (give the path then).
        """
        out: list[str] = []
        recorded = [str(md.get("source", "")) for md in self._rec.metadata]
        for want in sources:
            exact = [i for i, src in enumerate(recorded) if src == want]
            hits = exact
            if not hits and "/" not in want and "\\" not in want:
                hits = [i for i, src in enumerate(recorded) if src and Path(src).name == want]
                if len({recorded[i] for i in hits}) > 1:
                    raise GalleryError(
                        f"{want!r} names photos in several folders "
                        f"({sorted({recorded[i] for i in hits})[:3]}); give the path"
                    )
            if not hits:
                raise GalleryError(f"no photo with source {want!r} in the gallery")
            out += [self._rec.image_ids[i] for i in hits]
        return list(dict.fromkeys(out))

    def merge_from(self, other: Gallery) -> GalleryMergeReport:
        """Add every photo of ``other`` (a catalogue made with the same model).

        Photos whose content is already here (same SHA-256) are skipped and reported;
        individuals present in both become one animal (reported, with species that
        disagree); image ids that clash get fresh ones.

        Raises:
            GalleryError: When the galleries were made by different models or kinds.
        """
        if other.embedding_kind != self.embedding_kind:
            raise GalleryError(
                f"cannot merge {other.embedding_kind!r} vectors into a {self.embedding_kind!r} gallery"
            )
        if len(self) and len(other):
            if self.fingerprint is None or other.fingerprint is None:
                raise GalleryError(
                    "cannot merge galleries without model fingerprints (vectors unverifiable)"
                )
            if self.fingerprint != other.fingerprint:
                raise GalleryError(
                    f"the galleries were built with different models (fingerprints "
                    f"{self.fingerprint} and {other.fingerprint}); rebuild one with the other's model"
                )
        if self.fingerprint is None:
            self.fingerprint = other.fingerprint
            self.model_name = self.model_name or other.model_name
        known = self.known_sha256()
        ours = set(self._rec.individual_ids)
        owner = dict(zip(self._rec.image_ids, self._rec.individual_ids, strict=True))
        duplicates: list[tuple[str, str]] = []
        relabelled: list[tuple[str, str, str]] = []
        keep: list[int] = []
        for i, rec in enumerate(other.records()):
            digest = rec["metadata"].get("sha256")
            if isinstance(digest, str) and digest in known:
                duplicates.append((rec["image_id"], known[digest]))
                if owner[known[digest]] != rec["individual_id"]:
                    relabelled.append((digest, owner[known[digest]], rec["individual_id"]))
                continue
            if isinstance(digest, str):
                known[digest] = rec["image_id"]
                owner[rec["image_id"]] = rec["individual_id"]
            keep.append(i)
        incoming = [other.records()[i] for i in keep]
        shared = sorted(ours & {r["individual_id"] for r in incoming})
        conflicts = []
        for ind in shared:
            a, b = self.species_of(ind), other.species_of(ind)
            if a and b and a != b:
                conflicts.append((ind, a, b))
        taken = set(self._rec.image_ids)
        ids = [r["image_id"] for r in incoming]
        clashes = [n for n, x in enumerate(ids) if x in taken]
        fresh = iter(self._fresh_ids(len(clashes), avoid=set(ids)))
        for n in clashes:
            ids[n] = next(fresh)
        if keep:
            self.add(
                other.embeddings[keep],
                [r["individual_id"] for r in incoming],
                [r["species"] for r in incoming],
                [r["metadata"] for r in incoming],
                ids,
            )
        return GalleryMergeReport(
            added=len(keep),
            duplicate_photos=tuple(duplicates),
            relabelled_conflicts=tuple(relabelled),
            shared_individuals=tuple(shared),
            species_conflicts=tuple(conflicts),
            renamed_image_ids=len(clashes),
        )

    def identify(
        self,
        query_embeddings: np.ndarray[Any, Any],
        top_k: int = 5,
        *,
        threshold: float | None = None,
        list_size: int | None = None,
    ) -> list[Identification]:
        """Search, then decide known vs new individual and vote on species.

        Args:
            query_embeddings: ``(Q, D)`` vectors.
            top_k: Candidates per query.
            threshold: The open-set threshold to apply; default: the gallery's own
                override (:attr:`new_individual_threshold`), else none (never new). A
                :class:`~ecomarine.pipeline.Pipeline` passes its model's threshold when the
                gallery has no override.
            list_size: Also return, in :attr:`Identification.ranked`, this many ranked
                individuals from the same search (for calibrated probabilities).
        """
        thr = self.new_individual_threshold if threshold is None else threshold
        n_species = self.species_count()
        depth = max(top_k, list_size or 0)
        return [
            self._decide(ranked, top_k, thr, n_species, keep_ranked=list_size is not None)
            for ranked in self.search(query_embeddings, depth)
        ]

    def _decide(
        self,
        ranked: Sequence[Match],
        top_k: int,
        threshold: float | None,
        n_species: int,
        *,
        evidence: Mapping[str, tuple[PhotoEvidence, ...]] | None = None,
        keep_ranked: bool = False,
    ) -> Identification:
        """The open-set decision and species vote over the first ``top_k`` of a ranking."""
        cands = tuple(ranked[:top_k])
        best = cands[0] if cands else None
        is_new = best is None or (threshold is not None and best.score < threshold)
        matched = None if is_new or best is None else best.individual_id
        species, share = vote_species(cands, matched=matched, catalogue_species=n_species)
        return Identification(
            individual_id=matched,
            is_new_individual=is_new,
            candidates=cands,
            species=species,
            species_score=share,
            threshold=threshold,
            evidence={
                k: v for k, v in (evidence or {}).items() if k in {m.individual_id for m in cands}
            },
            ranked=tuple(ranked) if keep_ranked else (),
        )

    def identify_sightings(
        self,
        sightings: Sequence[np.ndarray[Any, Any]],
        top_k: int = 5,
        *,
        threshold: float | None = None,
        aggregation: str = "top3",
        list_size: int | None = None,
    ) -> list[Identification]:
        """Identify sightings: each a set of query vectors (photos) of one animal.

        Every photo scores each individual by its best-matching image; the photos' scores
        combine by ``aggregation`` (see :data:`~ecomarine.search.SET_AGGREGATIONS`) into
        one score per individual, compared with ``threshold`` (a *sighting* threshold:
        aggregated scores are not distributed like single-photo scores). The search is
        exact whatever the index kind.

        Args:
            sightings: Per sighting, a ``(Q, D)`` array of its photos' vectors (``Q >= 1``).
            top_k: Candidates per sighting.
            threshold: Sighting threshold; ``None``: never new.
            aggregation: How photos combine.
            list_size: As in :meth:`identify`.

        Raises:
            GalleryError: For an empty sighting, bad vectors or an unknown aggregation.
        """
        names, rows = self._labels()
        n_species = self.species_count()
        depth = max(top_k, list_size or 0)
        out: list[Identification] = []
        for vectors in sightings:
            q = self._check_queries(vectors)
            hits = (
                rank_individuals_for_set(self._emb, rows, q, depth, aggregation=aggregation)
                if len(self)
                else []
            )
            ranked = [
                Match(
                    names[h.individual],
                    h.score,
                    self.species_of_cached(names[h.individual]),
                    self._rec.image_ids[h.evidence[0][1]],
                )
                for h in hits
            ]
            evidence = {
                names[h.individual]: tuple(
                    PhotoEvidence(p, self._rec.image_ids[img], score)
                    for p, img, score in h.evidence
                )
                for h in hits[:top_k]
            }
            out.append(
                self._decide(
                    ranked,
                    top_k,
                    threshold,
                    n_species,
                    evidence=evidence,
                    keep_ranked=list_size is not None,
                )
            )
        return out

    def calibrate_new_individual(
        self, *, group_key: str = "encounter", top_k: int = 5, apply: bool = True
    ) -> NewIndividualCalibration:
        """Choose the open-set threshold from the gallery itself, with no test data.

        Each group of images (by ``metadata[group_key]``, e.g. an encounter; each image
        alone when absent) is queried against the rest of the gallery. A query whose
        individual has no image outside its group plays a new individual. The threshold
        maximising MAP@5 on these queries is chosen (see
        :func:`~ecomarine.calibration.calibrate_open_set`), and with ``apply`` stored as
        this gallery's override of its model's threshold.

        Raises:
            GalleryError: With fewer than two groups.
        """
        groups = [
            str(md.get(group_key, f"__image__{img}"))
            for md, img in zip(self._rec.metadata, self._rec.image_ids, strict=True)
        ]
        if len(set(groups)) < 2:
            raise GalleryError("calibration needs at least two groups (encounters or images)")
        result = calibrate_open_set(
            self._emb,
            self._rec.individual_ids,
            self._emb,
            self._rec.individual_ids,
            gallery_groups=groups,
            query_groups=groups,
            top_k=top_k,
        )
        if apply:
            self.new_individual_threshold = result.threshold
        return result

    # --- persistence --------------------------------------------------------------------

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Save atomically: new data files first, then the manifest is swapped in.

        An interrupted save leaves the previous gallery loadable. A lock file keeps two
        processes from saving to the same folder at once (the second gets a
        :class:`GalleryError`); use :meth:`update` for read-modify-write.
        """
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        with _locked(folder, wait=False):
            return self._save_locked(folder)

    @classmethod
    @contextlib.contextmanager
    def update(
        cls, directory: str | os.PathLike[str], *, timeout: float = 60.0, **load_kwargs: Any
    ) -> Iterator[Gallery]:
        """Load, let the caller modify, and save a gallery under one exclusive lock.

        Two processes adding to the same gallery folder this way never lose each other's
        additions: the second waits (up to ``timeout`` seconds) for the first.

        Example:
            >>> with Gallery.update("my-gallery") as g:  # doctest: +SKIP
            ...     g.add(vectors, ids)
        """
        folder = Path(directory)
        with _locked(folder, wait=True, timeout=timeout):
            gallery = cls.load(folder, **load_kwargs)
            yield gallery
            gallery._save_locked(folder)

    def _save_locked(self, folder: Path) -> Path:
        token = uuid.uuid4().hex[:12]
        emb_name = f"embeddings-{token}.safetensors"
        rec_name = f"records-{token}.jsonl"
        emb_bytes = save_safetensors({"embeddings": np.ascontiguousarray(self._emb)})
        rec_bytes = "".join(
            json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in self.records()
        ).encode("utf-8")
        atomic_write_bytes(folder / emb_name, emb_bytes)
        atomic_write_bytes(folder / rec_name, rec_bytes)
        manifest = {
            "format_version": GALLERY_FORMAT_VERSION,
            "count": len(self),
            "dim": self.dim,
            "fingerprint": self.fingerprint,
            "embedding_kind": self.embedding_kind,
            "model_name": self.model_name,
            "new_individual_threshold": self.new_individual_threshold,
            "aggregation": self.aggregation,
            "index_kind": self.index_kind,
            "files": {
                "embeddings": {"name": emb_name, "sha256": _sha256(emb_bytes)},
                "records": {"name": rec_name, "sha256": _sha256(rec_bytes)},
            },
        }
        atomic_write_text(folder / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
        for stale in list(folder.glob("embeddings-*.safetensors")) + list(
            folder.glob("records-*.jsonl")
        ):
            if stale.name not in (emb_name, rec_name):
                with contextlib.suppress(OSError):
                    stale.unlink()
        # Temporaries of saves killed midway (their targets had other names): under the
        # lock no other writer is at work here, so every one of them is a leftover.
        for pattern in (".embeddings-*.tmp", ".records-*.tmp", f".{MANIFEST_NAME}.*.tmp"):
            for leftover in folder.glob(pattern):
                with contextlib.suppress(OSError):
                    leftover.unlink()
        return folder

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        expected_fingerprint: str | None = None,
        use_faiss: bool | None = None,
    ) -> Gallery:
        """Load a gallery saved with :meth:`save`, verifying every file.

        Args:
            directory: The gallery folder.
            expected_fingerprint: The fingerprint of the model about to query it; a
                different one is refused (vectors from different models do not compare).
            use_faiss: As in the constructor.

        Raises:
            GalleryError: Missing, truncated or mismatched files, an unknown version, or
                a fingerprint mismatch.
        """
        folder = Path(directory)
        for attempt in range(3):
            before = _manifest_bytes(folder)
            try:
                return cls._load_once(folder, expected_fingerprint, use_faiss)
            except GalleryError:
                # A concurrent save may have swapped the manifest and removed the files the
                # old one named; read again then. Otherwise the error is real.
                if attempt == 2 or _manifest_bytes(folder) == before:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    @classmethod
    def _load_once(
        cls, folder: Path, expected_fingerprint: str | None, use_faiss: bool | None
    ) -> Gallery:
        manifest_path = folder / MANIFEST_NAME
        if not manifest_path.is_file():
            raise GalleryError(f"{folder}: not a gallery (no {MANIFEST_NAME})")
        manifest = parse_json(
            _read_file(folder, MANIFEST_NAME, MAX_MANIFEST_BYTES),
            lambda why: GalleryError(f"{manifest_path}: unreadable manifest ({why})"),
        )
        if (
            not isinstance(manifest, dict)
            or manifest.get("format_version") not in _READABLE_VERSIONS
        ):
            raise GalleryError(f"{manifest_path}: unsupported or missing format_version")
        m = _Manifest.parse(manifest, manifest_path)
        emb_bytes = _read_checked(folder, m.embeddings)
        rec_bytes = _read_checked(folder, m.records)
        try:
            emb = load_safetensors(emb_bytes)["embeddings"]
        except Exception as exc:  # safetensors raises its own types on corrupt data
            raise GalleryError(f"{folder}: corrupt embeddings file ({exc})") from exc
        try:
            text = rec_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GalleryError(f"{folder}: records file is not UTF-8 ({exc.reason})") from exc
        records = [
            _Record.from_line(line, f"{folder}: records line {n}")
            for n, line in enumerate(text.splitlines(), 1)
        ]
        if emb.ndim != 2 or len(emb) != m.count or len(records) != m.count:
            raise GalleryError(
                f"{folder}: manifest says {m.count} images, found {len(emb)} vectors and "
                f"{len(records)} records"
            )
        if m.count and m.dim is not None and emb.shape[1] != m.dim:
            raise GalleryError(f"{folder}: manifest says dim {m.dim}, vectors have {emb.shape[1]}")
        if expected_fingerprint is not None and m.fingerprint != expected_fingerprint:
            if m.fingerprint is not None:
                raise GalleryError(
                    f"{folder}: built with a different model (fingerprint {m.fingerprint}, "
                    f"this model {expected_fingerprint}); rebuild it with this model"
                )
            if m.count:
                raise GalleryError(
                    f"{folder}: the gallery records no model fingerprint, so its vectors cannot "
                    "be checked against this model; rebuild it with this model (or load it "
                    "without expected_fingerprint and attach it yourself)"
                )
        if m.threshold is not None and manifest["format_version"] == 1:
            logger.info(
                "%s: a version-1 gallery; its threshold %s is kept as an explicit override "
                "(set Gallery.new_individual_threshold = None to follow the model's)",
                folder,
                m.threshold,
            )
        gallery = cls(
            fingerprint=m.fingerprint,
            embedding_kind=m.kind,
            new_individual_threshold=m.threshold,
            index_kind=m.index_kind,
            use_faiss=use_faiss,
            aggregation=m.aggregation,
            model_name=m.model_name,
        )
        if m.count:
            gallery.add(
                emb,
                [r.individual_id for r in records],
                [r.species for r in records],
                [r.metadata for r in records],
                [r.image_id for r in records],
            )
        return gallery


#: Largest manifest read (it holds a few fields and two file names).
MAX_MANIFEST_BYTES = 1024 * 1024
#: Largest data file read (a 10-million-image, 512-dimension float32 gallery is 20 GB).
MAX_DATA_BYTES = 64 * 1024**3


def _read_file(folder: Path, name: str, max_bytes: int) -> bytes:
    """A gallery file: a regular file inside the folder, never a link out of it."""

    def fail(reason: str) -> GalleryError:
        return GalleryError(f"{folder}: missing or unreadable {name} ({reason})")

    return read_regular(folder / name, fail, max_bytes=max_bytes, follow_symlinks=False)


def _field(data: Mapping[str, Any], key: str, kinds: tuple[type, ...], where: Path | str) -> Any:
    value = data.get(key)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise GalleryError(f"{where}: malformed manifest ('{key}' must be {names})")
    return value


@dataclass(frozen=True)
class _Manifest:
    """``gallery.json``, every field type-checked."""

    count: int
    dim: int | None
    fingerprint: str | None
    kind: EmbeddingKind
    model_name: str | None
    threshold: float | None
    aggregation: Aggregation
    index_kind: IndexKind
    embeddings: Mapping[str, str]
    records: Mapping[str, str]

    @classmethod
    def parse(cls, data: Mapping[str, Any], where: Path) -> _Manifest:
        count = _field(data, "count", (int,), where)
        if count < 0:
            raise GalleryError(f"{where}: malformed manifest ('count' must be >= 0)")
        files = _field(data, "files", (dict,), where)
        entries = []
        for key in ("embeddings", "records"):
            entry = _field(files, key, (dict,), where)
            _field(entry, "name", (str,), where)
            _field(entry, "sha256", (str,), where)
            entries.append(entry)
        kind_value = data.get("embedding_kind", "embedding")
        try:
            kind = embedding_kind(kind_value)
        except ConfigError as exc:
            raise GalleryError(f"{where}: unknown embedding_kind {kind_value!r}") from exc
        aggregation = data.get("aggregation", "max")
        if aggregation not in AGGREGATIONS:
            raise GalleryError(f"{where}: unknown aggregation {aggregation!r}")
        index_kind = data.get("index_kind", "flat")
        if index_kind not in INDEX_KINDS:
            raise GalleryError(f"{where}: unknown index_kind {index_kind!r}")
        return cls(
            count=count,
            dim=_field(data, "dim", (int, type(None)), where),
            fingerprint=_field(data, "fingerprint", (str, type(None)), where),
            kind=kind,
            model_name=_field(data, "model_name", (str, type(None)), where),
            threshold=_threshold_or_none(data.get("new_individual_threshold"), where),
            aggregation=aggregation,
            index_kind=index_kind,
            embeddings=entries[0],
            records=entries[1],
        )


@dataclass(frozen=True)
class _Record:
    """One line of the records file, every field type-checked."""

    image_id: str
    individual_id: str
    species: str | None
    metadata: dict[str, Any]

    @classmethod
    def from_line(cls, line: str, where: str) -> _Record:
        data = parse_json(line, lambda why: GalleryError(f"{where} is not JSON ({why})"))
        if not isinstance(data, dict):
            raise GalleryError(f"{where}: malformed record (expected an object)")
        image_id, individual = data.get("image_id"), data.get("individual_id")
        species, metadata = data.get("species"), data.get("metadata") or {}
        if not isinstance(image_id, str) or not image_id:
            raise GalleryError(f"{where}: malformed record ('image_id' must be a string)")
        if not isinstance(individual, str) or not individual:
            raise GalleryError(f"{where}: malformed record ('individual_id' must be a string)")
        if species is not None and not isinstance(species, str):
            raise GalleryError(f"{where}: malformed record ('species' must be a string)")
        if not isinstance(metadata, dict):
            raise GalleryError(f"{where}: malformed record ('metadata' must be an object)")
        return cls(image_id, individual, species, metadata)


def _threshold_or_none(value: object, where: Path | str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GalleryError(f"{where}: new_individual_threshold must be a number or null")
    if not (math.isfinite(value) and -1.0 <= value <= 1.0):
        raise GalleryError(f"{where}: new_individual_threshold must be a cosine in [-1, 1]")
    return float(value)


def _manifest_bytes(folder: Path) -> bytes | None:
    try:
        return _read_file(folder, MANIFEST_NAME, MAX_MANIFEST_BYTES)
    except GalleryError:
        return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_checked(folder: Path, entry: Mapping[str, Any]) -> bytes:
    name = str(entry["name"])
    if "/" in name or "\\" in name or name.startswith("."):
        raise GalleryError(f"{folder}: suspicious file name {name!r} in manifest")
    path = folder / name
    data = _read_file(folder, name, MAX_DATA_BYTES)
    if _sha256(data) != entry["sha256"]:
        raise GalleryError(f"{path}: checksum mismatch (truncated or modified)")
    return data


@contextlib.contextmanager
def _locked(folder: Path, *, wait: bool, timeout: float = 60.0) -> Iterator[None]:
    try:
        import fcntl  # noqa: PLC0415 - POSIX only
    except ImportError:  # pragma: no cover - Windows: no advisory locks, best effort
        yield
        return
    if not folder.is_dir():
        raise GalleryError(f"{folder}: not a gallery folder")
    with (folder / LOCK_NAME).open("a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as exc:
                if not wait or time.monotonic() > deadline:
                    raise GalleryError(
                        f"{folder}: another process is writing this gallery; try again"
                    ) from exc
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _check_index_kind(kind: str) -> None:
    if kind not in INDEX_KINDS:
        raise GalleryError(f"index kind must be one of {', '.join(INDEX_KINDS)}; got {kind!r}")
