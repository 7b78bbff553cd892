"""The :class:`Pipeline`: gate -> identifier -> gallery (or head) -> :class:`Prediction`.

``predict_many`` streams: images are read and decoded in a bounded pool of threads
(Pillow releases the GIL), each photo is decoded once at the scale the networks need
(JPEG draft mode), the networks run on batches, and results come back in input order.
An unreadable photo becomes a :class:`Prediction` with a rejection reason instead of
aborting the run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
import torch

from . import hub
from ._atomic import atomic_write_text
from ._memory import release_free_memory
from ._pretrained import BUNDLED, LoadRequest, PretrainedMixin
from .config import PreprocessConfig, read_json
from .errors import (
    ConfigError,
    GalleryError,
    ImageTooLargeError,
    InvalidImageError,
    WeightsNotFoundError,
)
from .gallery import Gallery
from .gate import Gate, clip_gate
from .hub import HubOptions
from .identifier import Identifier
from .io import ImageSource, content_sha256, describe_source, read_image_file
from .metrics import NEW_INDIVIDUAL
from .species_vote import vote_species
from .transforms import (
    decode_pool,
    decode_size,
    default_workers,
    load_pixels,
    normalize_batch,
    resize_pixels,
)
from .types import EmbeddingKind, Match, Prediction, SightingPrediction, embedding_kind
from .uncertainty import (
    DEFAULT_ALPHA,
    LIST_SIZE,
    OTHER_KNOWN,
    Assessment,
    UncertaintyCalibration,
)

__all__ = ["DEFAULT_MODEL", "PRODUCTION_CLIP", "DuplicatePolicy", "GateChoice", "Pipeline"]

logger = logging.getLogger(__name__)

#: The production identifier on the Hub (EcoMarineAI checkpoint, legacy layout).
DEFAULT_MODEL = "0x0000dead/ecomarineai-cetacean-effb4"
#: The production gate: OpenCLIP ViT-B-32 (LAION-2B), weights on the Hub.
PRODUCTION_CLIP = ("ViT-B-32", "laion2b_s34b_b79k")
PIPELINE_CONFIG = "pipeline.json"
# Photos between returns of freed heap to the OS: often enough to keep a long run flat,
# rarely enough that the next batch does not pay for faulting its buffers back in.
_TRIM_EVERY = 64

#: How a sighting's photos combine when the model ships no calibrated choice.
DEFAULT_SIGHTING_AGGREGATION = "top3"

#: How a pipeline decides known vs new (see :attr:`Pipeline.decision`).
Decision = Literal["threshold", "probability"]

#: What :meth:`Pipeline.enroll` does with a photo already in the gallery.
DuplicatePolicy = Literal["skip", "error", "keep"]

#: A pipeline's gate: a :class:`Gate`, a gate source (``"embedded"``, a folder, a Hub
#: repo), ``None`` for the source's default, or ``False`` for no gate at all.
GateChoice = Gate | str | os.PathLike[str] | Literal[False] | None


@dataclass
class _Item:
    """One photo on its way through the pipeline."""

    index: int
    source: str
    sha256: str | None
    gate_input: torch.Tensor | None = None
    ident_input: torch.Tensor | None = None
    error: InvalidImageError | None = None


class ModelFields(TypedDict):
    """The fields every record carries about the model that made it."""

    model_id: str
    model_license: str | None


class Pipeline(PretrainedMixin):
    """Gate, identifier and an optional gallery, used together.

    ``Pipeline.from_pretrained(name_or_dir=None, *, gallery=None, gate=None,
    embedding_kind=None, ...)`` builds one from: ``None``, the production weights on the
    Hub (the EcoMarineAI identifier and the OpenCLIP gate, fetched lazily);
    ``"embedded"``, the bundled offline weights with the embedded gate; a folder written
    by :meth:`save_pretrained`; or an identifier folder / Hub repo (with the embedded
    gate). ``gallery`` attaches a gallery folder or object; ``gate`` overrides the gate
    (see :data:`GateChoice`; ``False`` for none); ``embedding_kind`` is the gallery's kind
    (default: the saved pipeline's, else ``"embedding"``). The Hub keywords are those of
    :meth:`~ecomarine._pretrained.PretrainedMixin.from_pretrained`.

    Args:
        identifier: Makes the embeddings (and, with a head, closed-set candidates).
        gate: Rejects non-cetacean photos; ``None`` accepts everything.
        gallery: Known individuals; when absent, candidates come from the head.
        embedding_kind: ``"embedding"`` (trained) or ``"features"`` (general).
        top_k: Candidates per prediction.
    """

    default_source = None
    push_message = "Upload ecomarine pipeline"

    def __init__(
        self,
        identifier: Identifier,
        gate: Gate | None = None,
        gallery: Gallery | None = None,
        *,
        embedding_kind: EmbeddingKind = "embedding",
        top_k: int = 5,
    ) -> None:
        self.identifier = identifier
        self.gate = gate
        self.embedding_kind: EmbeddingKind = embedding_kind
        self.top_k = top_k
        #: Miscoverage of the conformal candidate sets (sets hold the answer 1 - alpha
        #: of the time).
        self.alpha = DEFAULT_ALPHA
        #: Expected share of new animals (``None``: the model's default); re-weights
        #: ``p_known`` and the sets without re-running the networks.
        self.new_share: float | None = None
        #: The open-set verdict: ``"threshold"`` (the best score against the open-set
        #: threshold) or ``"probability"`` (known when ``p_known >= known_level`` and the
        #: candidate set names exactly one individual; needs calibration data).
        self.decision: Decision = "threshold"
        self.known_level = 0.5
        self._warned_uncalibrated = False
        self.gallery: Gallery | None = None
        if gallery is not None:
            self.attach_gallery(gallery)

    # --- construction -------------------------------------------------------------------

    @classmethod
    def _from_source(
        cls,
        request: LoadRequest,
        *,
        gallery: str | os.PathLike[str] | Gallery | None = None,
        gate: GateChoice = None,
        embedding_kind: EmbeddingKind | None = None,
    ) -> Pipeline:
        name_or_path, options, device = request.name_or_path, request.options, request.device
        kind: EmbeddingKind = embedding_kind or "embedding"
        default_gate: str | os.PathLike[str] | None = "embedded"
        if name_or_path is None:
            identifier_source: str | os.PathLike[str] = DEFAULT_MODEL
            default_gate = None  # the production CLIP gate
        elif isinstance(name_or_path, str) and name_or_path in BUNDLED:
            identifier_source = name_or_path
        elif (Path(os.fspath(name_or_path)) / PIPELINE_CONFIG).is_file():
            saved = _read_pipeline_config(Path(os.fspath(name_or_path)))
            identifier_source = saved.identifier
            default_gate = saved.gate
            kind = embedding_kind or saved.embedding_kind
            if gallery is None and saved.gallery is not None:
                gallery = saved.gallery
            if saved.gate is None and gate is None:
                gate = False  # saved without a gate
        else:
            identifier_source = name_or_path
        identifier = Identifier._from_source(LoadRequest(identifier_source, options, device))
        gate_obj = _gate(gate, default_gate, options, device)
        gal: Gallery | None = None
        if isinstance(gallery, Gallery):
            gal = gallery
        elif gallery is not None:
            gal = Gallery.load(gallery, expected_fingerprint=identifier.fingerprint(kind))
        return cls(identifier, gate_obj, gal, embedding_kind=kind)

    @property
    def model_fields(self) -> ModelFields:
        """Which model made a record: ``model_id`` and ``model_license``, for every record."""
        config = self.identifier.config
        return {"model_id": config.name, "model_license": config.license}

    def attach_gallery(self, gallery: Gallery) -> None:
        """Attach a gallery, checking that it holds this identifier's kind of vectors.

        Raises:
            GalleryError: When the gallery was built by another model or embedding kind.
        """
        expected = self.identifier.fingerprint(self.embedding_kind)
        if gallery.fingerprint not in (None, expected):
            raise GalleryError(
                f"gallery built with a different model or embedding kind "
                f"(fingerprint {gallery.fingerprint}, pipeline {expected})"
            )
        if len(gallery) and gallery.embedding_kind != self.embedding_kind:
            raise GalleryError(
                f"gallery holds {gallery.embedding_kind!r} vectors; pipeline uses {self.embedding_kind!r}"
            )
        if gallery.fingerprint is None:
            gallery.fingerprint = expected
        self.gallery = gallery

    def new_gallery(self) -> Gallery:
        """An empty gallery for this pipeline's identifier.

        It stores no threshold of its own: identifications use the model's calibrated one
        (:attr:`new_individual_threshold`), also after the model is recalibrated.
        """
        return Gallery(
            fingerprint=self.identifier.fingerprint(self.embedding_kind),
            embedding_kind=self.embedding_kind,
            model_name=self.identifier.config.name,
        )

    @property
    def new_individual_threshold(self) -> float | None:
        """The open-set threshold in force: the gallery's override, else the model's."""
        if self.gallery is not None and self.gallery.new_individual_threshold is not None:
            return self.gallery.new_individual_threshold
        return self.identifier.threshold_for(self.embedding_kind)

    @property
    def threshold_source(self) -> str:
        """Where :attr:`new_individual_threshold` comes from, in words."""
        if self.gallery is not None and self.gallery.new_individual_threshold is not None:
            return "the gallery's own calibration"
        if self.identifier.threshold_for(self.embedding_kind) is not None:
            return f"the model {self.identifier.config.name!r}"
        return "none (the model has no calibrated threshold)"

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> Path:
        """Write ``pipeline.json`` with ``identifier/``, ``gate/`` and ``gallery/``."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.identifier.save_pretrained(folder / "identifier")
        cfg: dict[str, Any] = {
            "format_version": 1,
            "identifier": "identifier",
            "embedding_kind": self.embedding_kind,
            "gate": None,
            "gallery": None,
        }
        if self.gate is not None:
            self.gate.save_pretrained(folder / "gate")
            cfg["gate"] = "gate"
        if self.gallery is not None:
            self.gallery.save(folder / "gallery")
            cfg["gallery"] = "gallery"
        atomic_write_text(folder / PIPELINE_CONFIG, json.dumps(cfg, indent=2) + "\n")
        return folder

    # --- catalogue ----------------------------------------------------------------------

    def enroll(
        self,
        images: Sequence[ImageSource],
        individual_ids: Sequence[str],
        species: Sequence[str | None] | str | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        batch_size: int = 32,
        duplicates: DuplicatePolicy = "skip",
        progress: Callable[[int], None] | None = None,
        embed: Callable[[list[ImageSource]], np.ndarray[Any, Any]] | None = None,
    ) -> list[str]:
        """Embed photos of known individuals into the attached gallery (created if needed).

        Each photo read from a file or bytes is recorded with its content hash
        (``metadata["sha256"]``), so the same photo enrolled twice is recognised.

        Args:
            images: Photo sources.
            individual_ids: One id per photo.
            species: One label per photo, or one for all.
            metadata: Optional JSON-serialisable dict per photo.
            batch_size: Photos per network pass.
            duplicates: A photo whose content is already in the gallery (or earlier in
                ``images``): ``"skip"`` it (logged), ``"error"``, or ``"keep"`` it anyway.
            progress: Called with the number of photos embedded after each batch.
            embed: What embeds the photos kept (default: this pipeline's identifier, in
                process); e.g. :func:`ecomarine.distributed.embed_on_ray` for a large
                catalogue. It must return this identifier's vectors of ``embedding_kind``.

        Returns:
            The image ids of the photos added, in input order (skipped ones have none).

        Raises:
            InvalidImageError: If a photo cannot be read (nothing is added then).
            GalleryError: With ``duplicates="error"``, naming the first duplicate.
        """
        if len(images) != len(individual_ids):
            raise ConfigError("enroll needs one individual id per image")
        if duplicates not in ("skip", "error", "keep"):
            raise ConfigError(f"duplicates must be 'skip', 'error' or 'keep', got {duplicates!r}")
        if self.gallery is None:
            self.gallery = self.new_gallery()
        meta = [dict(m or {}) for m in (metadata or [None] * len(images))]
        if len(meta) != len(images):
            raise ConfigError("enroll needs one metadata entry per image (or none)")
        per_image = (
            [species] * len(images) if species is None or isinstance(species, str) else species
        )
        known = self.gallery.known_sha256()
        keep: list[int] = []
        for i, (m, src) in enumerate(zip(meta, images, strict=True)):
            m.setdefault("source", describe_source(src))
            digest = content_sha256(src)
            if digest is not None:
                m["sha256"] = digest
                if digest in known and duplicates != "keep":
                    if duplicates == "error":
                        raise GalleryError(
                            f"{m['source']}: the same photo is already in the gallery "
                            f"(image {known[digest]})"
                        )
                    logger.info("skipping %s: already in the gallery", m["source"])
                    continue
                known.setdefault(digest, f"(input {i})")
            keep.append(i)
        kept = [images[i] for i in keep]
        if embed is not None:
            emb = embed(kept)
        else:
            emb = self.identifier.embed(
                kept, batch_size=batch_size, kind=self.embedding_kind, progress=progress
            )
        return self.gallery.add(
            emb,
            [individual_ids[i] for i in keep],
            [per_image[i] for i in keep],
            [meta[i] for i in keep],
        )

    # --- prediction ---------------------------------------------------------------------

    def predict(self, image: ImageSource) -> Prediction:
        """Identify one photo."""
        return next(iter(self.predict_many([image], batch_size=1, num_workers=1)))

    def predict_many(
        self,
        images: Iterable[ImageSource],
        *,
        batch_size: int = 32,
        num_workers: int | None = None,
    ) -> Iterator[Prediction]:
        """Identify photos, streaming one :class:`Prediction` per input, in order.

        Args:
            images: Any iterable of image sources (consumed lazily).
            batch_size: Photos per network pass.
            num_workers: Decode threads (default: CPU count, at most 8).
        """
        for pred, _vector in self._stream(images, batch_size, num_workers):
            yield pred

    @property
    def sighting_aggregation(self) -> str:
        """How a sighting's photos combine: the model's calibrated choice, else ``"top3"``."""
        return self.identifier.config.sighting_aggregation or DEFAULT_SIGHTING_AGGREGATION

    @property
    def sighting_threshold(self) -> float | None:
        """The open-set threshold for sightings: the model's, calibrated with its aggregation."""
        return self.identifier.config.sighting_threshold_for(self.embedding_kind)

    def predict_sightings(
        self,
        sightings: Mapping[str, Sequence[ImageSource]],
        *,
        batch_size: int = 32,
        num_workers: int | None = None,
        aggregation: str | None = None,
        threshold: float | None = None,
        photo_names: Mapping[str, Sequence[str]] | None = None,
    ) -> list[SightingPrediction]:
        """Identify sightings: each a named set of photos (or video frames) of one animal.

        All photos go through the gate and the identifier in shared batches; photos the
        gate rejects (or that cannot be read) do not vote. With a gallery, each sighting
        is searched as a set (:meth:`Gallery.identify_sightings`) and decided with the
        *sighting* threshold; without one, the head's probabilities are averaged over the
        photos (hints, as for a single photo).

        Args:
            sightings: Sighting id -> its photos, in order.
            batch_size: Photos per network pass.
            num_workers: Decode threads.
            aggregation: How photos combine (default: :attr:`sighting_aggregation`).
            threshold: Sighting threshold (default: :attr:`sighting_threshold`; a model
                without one never declares a sighting new, and says so in the log).
            photo_names: Per sighting, a name for each photo's ``source`` (e.g.
                ``clip.mp4#t=2.0`` for video frames).

        Returns:
            One :class:`SightingPrediction` per sighting, in input order.
        """
        ids = list(sightings)
        if photo_names is not None:
            for sid in ids:
                if len(photo_names.get(sid, ())) != len(sightings[sid]):
                    raise ConfigError(f"photo_names for sighting {sid!r}: one name per photo")
        owners = [i for i, sid in enumerate(ids) for _ in sightings[sid]]
        sources = (src for sid in ids for src in sightings[sid])
        photos: list[list[Prediction]] = [[] for _ in ids]
        vectors: list[list[np.ndarray[Any, Any]]] = [[] for _ in ids]
        positions: list[list[int]] = [[] for _ in ids]  # where each voting photo sits
        stream = self._stream(sources, batch_size, num_workers)
        for owner, (pred, vector) in zip(owners, stream, strict=True):
            named = pred
            if photo_names is not None:
                names = photo_names[ids[owner]]
                named = dataclasses.replace(pred, source=names[len(photos[owner])])
            if vector is not None:
                vectors[owner].append(vector)
                positions[owner].append(len(photos[owner]))
            photos[owner].append(named)
        agg = aggregation or self.sighting_aggregation
        thr = self.sighting_threshold if threshold is None else threshold
        voting = [i for i in range(len(ids)) if vectors[i]]
        answers: dict[int, SightingPrediction] = {}
        if voting and self.gallery is not None and len(self.gallery):
            if thr is None:
                logger.warning(
                    "the model %r has no calibrated sighting threshold: no sighting is "
                    "declared new (pass threshold=, or recalibrate the model)",
                    self.identifier.config.name,
                )
            cfg = self.identifier.config
            # Calibrated for the model's own aggregation only.
            uncertainty = (
                cfg.sighting_uncertainty
                if self.embedding_kind == "embedding" and agg == cfg.sighting_aggregation
                else None
            )
            found = self.gallery.identify_sightings(
                [np.stack(vectors[i]) for i in voting],
                self.top_k,
                threshold=thr,
                aggregation=agg,
                list_size=None if uncertainty is None else LIST_SIZE,
            )
            for i, ans in zip(voting, found, strict=True):
                calib = None
                if uncertainty is not None:
                    calib = uncertainty.assess(
                        ans.ranked, alpha=self.alpha, new_share=self.new_share
                    )
                extra: dict[str, Any] = {}
                matches = ans.candidates
                if calib is not None:
                    matches, extra = _with_probabilities(matches, calib)
                answers[i] = SightingPrediction(
                    sighting_id=ids[i],
                    individual_id=ans.individual_id,
                    is_new_individual=ans.is_new_individual,
                    candidates=matches,
                    species=ans.species,
                    species_score=ans.species_score,
                    photos=tuple(photos[i]),
                    new_individual_threshold=ans.threshold,
                    aggregation=agg,
                    candidate_source="gallery" if ans.candidates else None,
                    evidence={
                        ind: tuple(dataclasses.replace(e, photo=positions[i][e.photo]) for e in ev)
                        for ind, ev in ans.evidence.items()
                    },
                    **self.model_fields,
                    **extra,
                )
        elif voting:
            for i in voting:
                answers[i] = self._head_sighting(ids[i], photos[i], np.stack(vectors[i]))
        return [
            answers.get(i)
            or SightingPrediction(
                sighting_id=ids[i],
                photos=tuple(photos[i]),
                rejection_reason="no_accepted_photo" if photos[i] else "empty_sighting",
                **self.model_fields,
            )
            for i in range(len(ids))
        ]

    def _head_sighting(
        self, sighting_id: str, photos: list[Prediction], vectors: np.ndarray[Any, Any]
    ) -> SightingPrediction:
        """Without a gallery: the head's probabilities averaged over the photos (hints)."""
        cands: list[Match] = []
        if self.identifier.head is not None and self.embedding_kind == "embedding":
            emb = torch.from_numpy(vectors).to(self.identifier.device)
            with torch.inference_mode():
                probs = torch.softmax(self.identifier.head(emb), dim=1).mean(dim=0).cpu()
            k = max(1, min(self.top_k, probs.shape[0]))
            values, rows = probs.topk(k)
            labels, species = self.identifier.labels, self.identifier.species_by_id
            cands = [
                Match(labels[r], float(v), species.get(labels[r]))
                for v, r in zip(values.tolist(), rows.tolist(), strict=True)
            ]
        n_species = len(set(self.identifier.species_by_id.values()))
        sp, share = vote_species(cands, matched=None, catalogue_species=n_species)
        return SightingPrediction(
            sighting_id=sighting_id,
            candidates=tuple(cands),
            species=sp,
            species_score=share,
            photos=tuple(photos),
            candidate_source="head" if cands else None,
            **self.model_fields,
        )

    def _stream(
        self, images: Iterable[ImageSource], batch_size: int, num_workers: int | None
    ) -> Iterator[tuple[Prediction, np.ndarray[Any, Any] | None]]:
        """Predictions in input order, each with its vector (``None`` when rejected)."""
        if batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        workers = default_workers() if num_workers is None else max(1, num_workers)
        if self.identifier.device.type == "cpu":
            # The networks already keep every core busy: photos decoded beside them only
            # fight them for the cores (measured slower, benchmarks/speed.py), so on a
            # CPU the decode threads and the networks take turns, batch by batch.
            window = batch_size
        else:
            window = max(batch_size * 2, workers * 2)  # bounded read-ahead: flat memory
        pending: deque[Future[_Item]] = deque()
        it = enumerate(images)
        pool = decode_pool(workers)
        since_trim = 0
        try:
            exhausted = False
            while True:
                while not exhausted and len(pending) < window:
                    nxt = next(it, None)
                    if nxt is None:
                        exhausted = True
                        break
                    pending.append(pool.submit(self._prepare, *nxt))
                if not pending:
                    break
                batch = [pending.popleft().result() for _ in range(min(batch_size, len(pending)))]
                yield from self._run_batch(batch)
                since_trim += len(batch)
                del batch
                if since_trim >= _TRIM_EVERY:
                    release_free_memory()
                    since_trim = 0
        finally:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _prepare(self, index: int, source: ImageSource) -> _Item:
        name = describe_source(source)
        digest: str | None = None
        try:
            data: ImageSource = source
            if isinstance(source, str | os.PathLike):
                data = read_image_file(Path(os.fspath(source)), name)
            if isinstance(data, bytes | bytearray | memoryview):
                digest = hashlib.sha256(data).hexdigest()
            configs = self._preprocess_configs()
            keep_aspect = any(pp.resize != "squash" for pp in configs)
            pixels = load_pixels(data, decode_size(configs), keep_aspect=keep_aspect)
        except InvalidImageError as exc:
            return _Item(index, name, digest, error=exc.renamed(name))
        ident_pp = self.identifier.config.preprocess
        try:
            ident_input = resize_pixels(pixels, ident_pp)
            gate_input = None
            if self.gate is not None:
                gate_pp = self.gate.config.preprocess
                same = gate_pp == ident_pp
                gate_input = ident_input if same else resize_pixels(pixels, gate_pp)
        except (RuntimeError, MemoryError) as exc:
            # One photo that cannot be resized must not end the run (see MAX_ASPECT_RATIO).
            error = InvalidImageError(name, f"cannot resize ({type(exc).__name__}: {exc})")
            return _Item(index, name, digest, error=error)
        return _Item(index, name, digest, gate_input, ident_input)

    def _preprocess_configs(self) -> list[PreprocessConfig]:
        """The inputs every network of the pipeline needs (decoding must serve them all)."""
        configs = [self.identifier.config.preprocess]
        if self.gate is not None:
            configs.append(self.gate.config.preprocess)
        return configs

    def _run_batch(
        self, items: list[_Item]
    ) -> Iterator[tuple[Prediction, np.ndarray[Any, Any] | None]]:
        ok = [it for it in items if it.error is None]
        gate_scores: dict[int, float] = {}
        looks: dict[int, str | None] = {}
        accepted = ok
        device = self.identifier.device
        if self.gate is not None and ok:
            gate_in = _stack([it.gate_input for it in ok], self.gate.config.preprocess, device)
            scores, kinds = self.gate.assess_tensor(gate_in)
            gate_scores = {it.index: float(s) for it, s in zip(ok, scores.tolist(), strict=True)}
            looks = {it.index: k for it, k in zip(ok, kinds, strict=True)}
            accepted = [it for it in ok if gate_scores[it.index] >= self.gate.threshold]
        answers: dict[int, tuple[Prediction, np.ndarray[Any, Any]]] = {}
        if accepted:
            pp = self.identifier.config.preprocess
            batch = _stack([it.ident_input for it in accepted], pp, device)
            emb = self.identifier.embed_tensor(batch, self.embedding_kind)
            vectors = emb.float().cpu().numpy()
            preds = self._identify(emb, vectors, accepted, gate_scores)
            for row, (it, pred) in enumerate(zip(accepted, preds, strict=True)):
                answers[it.index] = (pred, vectors[row])
        for it in items:
            if it.index in answers:
                yield answers[it.index]
            elif it.error is not None:
                too_large = isinstance(it.error, ImageTooLargeError)
                rejected = self._prediction(
                    it,
                    is_cetacean=False,
                    gate_score=None,
                    rejection_reason="image_too_large" if too_large else "unreadable_image",
                    error=str(it.error),
                )
                yield rejected, None
            else:
                rejected = self._prediction(
                    it,
                    is_cetacean=False,
                    gate_score=gate_scores.get(it.index),
                    rejection_reason="not_cetacean",
                    looks_like=looks.get(it.index),
                )
                yield rejected, None

    def _prediction(self, item: _Item, **fields: Any) -> Prediction:
        """The one place a :class:`Prediction` is made: the photo's own fields, plus ``fields``."""
        return Prediction(
            source=item.source,
            sha256=item.sha256,
            **self.model_fields,
            **fields,
        )

    @property
    def uncertainty(self) -> UncertaintyCalibration | None:
        """The model's calibrated probabilities (trained embedding only), if it has them."""
        if self.embedding_kind != "embedding":
            return None
        return self.identifier.config.uncertainty

    def _calibration_or_say_why(self) -> UncertaintyCalibration | None:
        """:attr:`uncertainty`, logging once when there is none."""
        calib = self.uncertainty
        if calib is None and not self._warned_uncalibrated:
            logger.info(
                "the model %r has no calibration data for probabilities: predictions "
                "carry no p_known or candidate set; the open-set threshold alone decides",
                self.identifier.config.name,
            )
            self._warned_uncalibrated = True
        return calib

    def _identify(
        self,
        emb: torch.Tensor,
        vectors: np.ndarray[Any, Any],
        items: list[_Item],
        gate_scores: dict[int, float],
    ) -> list[Prediction]:
        out: list[Prediction] = []
        if self.gallery is not None and len(self.gallery):
            uncertainty = self._calibration_or_say_why()
            answers = self.gallery.identify(
                vectors,
                self.top_k,
                threshold=self.new_individual_threshold,
                list_size=None if uncertainty is None else LIST_SIZE,
            )
            for it, ans in zip(items, answers, strict=True):
                calib = None
                if uncertainty is not None:
                    calib = uncertainty.assess(
                        ans.ranked, alpha=self.alpha, new_share=self.new_share
                    )
                matches = ans.candidates
                extra: dict[str, Any] = {}
                individual_id, is_new = ans.individual_id, ans.is_new_individual
                if calib is not None and self.decision == "probability":
                    named = [
                        x for x in calib.candidate_set if x not in (NEW_INDIVIDUAL, OTHER_KNOWN)
                    ]
                    sure = calib.p_known >= self.known_level and len(named) == 1
                    is_new = not sure
                    individual_id = named[0] if sure else None
                if calib is not None:
                    matches, extra = _with_probabilities(matches, calib)
                out.append(
                    self._prediction(
                        it,
                        is_cetacean=True,
                        gate_score=gate_scores.get(it.index),
                        species=ans.species,
                        species_score=ans.species_score,
                        individual_id=individual_id,
                        is_new_individual=is_new,
                        candidates=matches,
                        candidate_source="gallery" if ans.candidates else None,
                        new_individual_threshold=ans.threshold,
                        **extra,
                    )
                )
            return out
        ranked: list[list[Match]] = [[] for _ in items]
        if self.identifier.head is not None and self.embedding_kind == "embedding":
            ranked = self.identifier.matches_from_embeddings(emb, self.top_k)
        n_species = len(set(self.identifier.species_by_id.values()))
        for it, cands in zip(items, ranked, strict=True):
            # The head ranks the individuals the model was trained on, not the user's
            # catalogue: its candidates are hints, never an identification.
            species, share = vote_species(cands, matched=None, catalogue_species=n_species)
            out.append(
                self._prediction(
                    it,
                    is_cetacean=True,
                    gate_score=gate_scores.get(it.index),
                    species=species,
                    species_score=share,
                    candidates=tuple(cands),
                    candidate_source="head" if cands else None,
                )
            )
        return out


def _with_probabilities(
    matches: tuple[Match, ...], calib: Assessment
) -> tuple[tuple[Match, ...], dict[str, Any]]:
    """Candidates with their probabilities, and the calibrated fields of a prediction."""
    prob = dict(zip(calib.candidate_ids, calib.probabilities, strict=True))
    with_p = tuple(dataclasses.replace(m, probability=prob.get(m.individual_id)) for m in matches)
    return with_p, {
        "p_known": calib.p_known,
        "candidate_set": calib.candidate_set,
        "alpha": calib.alpha,
    }


def _stack(
    inputs: Sequence[torch.Tensor | None], pp: PreprocessConfig, device: torch.device
) -> torch.Tensor:
    present = [x for x in inputs if x is not None]
    if len(present) != len(inputs):  # pragma: no cover - _prepare always fills both
        raise ConfigError("internal error: a decoded image lacks its network input")
    return normalize_batch(present, pp, device)


@dataclass(frozen=True)
class _SavedPipeline:
    """``pipeline.json``: where the parts of a saved pipeline are."""

    identifier: str
    gate: str | None
    gallery: Path | None
    embedding_kind: EmbeddingKind


def _read_pipeline_config(folder: Path) -> _SavedPipeline:
    path = folder / PIPELINE_CONFIG
    cfg = read_json(path)
    if not isinstance(cfg, dict) or cfg.get("format_version") != 1:
        raise ConfigError(f"{path}: expected a JSON object with format_version 1")
    unknown = sorted(
        set(cfg) - {"format_version", "identifier", "gate", "gallery", "embedding_kind"}
    )
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}")
    gallery = _part(folder, cfg.get("gallery"), path, "gallery")
    gate = cfg.get("gate")
    identifier = _part(folder, cfg.get("identifier", "identifier"), path, "identifier")
    if identifier is None:  # a pipeline without its identifier is no pipeline
        raise ConfigError(f"{path}: 'identifier' must name the identifier's folder, not null")
    return _SavedPipeline(
        identifier=identifier,
        gate=None if gate is None else _part(folder, gate, path, "gate"),
        gallery=None if gallery is None else Path(gallery),
        embedding_kind=embedding_kind(
            cfg.get("embedding_kind", "embedding"), f"{path}: embedding_kind"
        ),
    )


def _part(folder: Path, value: object, where: Path, key: str) -> str | None:
    """A part's folder: a bundled name, or a subfolder of the pipeline folder (never outside)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key!r} must be a folder name or null")
    if value in BUNDLED:
        return value
    relative = Path(value)
    if relative.is_absolute() or ".." in relative.parts:
        raise ConfigError(f"{where}: {key!r} must name a folder inside {folder}, got {value!r}")
    return str(folder / relative)


def _gate(
    choice: GateChoice,
    default: str | os.PathLike[str] | None,
    options: HubOptions,
    device: Any,
) -> Gate | None:
    """The pipeline's gate: the caller's choice, else the source's default."""
    if choice is False:
        return None
    if isinstance(choice, Gate):
        return choice
    name = choice if choice is not None else default
    if name is None:
        return _production_gate(options.cache_dir)
    return Gate._from_source(LoadRequest(name, options, device))


def _production_gate(cache_dir: str | os.PathLike[str] | None) -> Gate:
    if hub.is_offline():
        raise WeightsNotFoundError(
            "the production CLIP gate is downloaded from the Hub, which is offline "
            '(HF_HUB_OFFLINE); use Pipeline.from_pretrained("embedded")'
        )
    model, tag = PRODUCTION_CLIP
    return clip_gate(model, tag, cache_dir=None if cache_dir is None else os.fspath(cache_dir))
