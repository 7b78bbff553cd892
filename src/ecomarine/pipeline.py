"""The :class:`Pipeline`: gate -> identifier -> gallery (or head) -> :class:`Prediction`.

``predict_many`` streams: images are read and decoded in a bounded pool of threads
(Pillow releases the GIL), each photo is decoded once at the scale the networks need
(JPEG draft mode), the networks run on batches, and results come back in input order.
An unreadable photo becomes a :class:`Prediction` with a rejection reason instead of
aborting the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import hub
from ._atomic import atomic_write_text
from ._memory import release_free_memory
from .config import PreprocessConfig, read_json
from .errors import ConfigError, ImageTooLargeError, InvalidImageError
from .gallery import Gallery
from .gate import Gate
from .identifier import EmbeddingKind, Identifier
from .io import ImageSource, describe_source
from .transforms import (
    decode_pool,
    decode_size,
    default_workers,
    load_pixels,
    normalize_batch,
    resize_pixels,
)
from .types import Match, Prediction

__all__ = ["DEFAULT_MODEL", "PRODUCTION_CLIP", "Pipeline"]

logger = logging.getLogger(__name__)

#: The production identifier on the Hub (EcoMarineAI checkpoint, legacy layout).
DEFAULT_MODEL = "0x0000dead/ecomarineai-cetacean-effb4"
#: The production gate: OpenCLIP ViT-B-32 (LAION-2B), weights on the Hub.
PRODUCTION_CLIP = ("ViT-B-32", "laion2b_s34b_b79k")
PIPELINE_CONFIG = "pipeline.json"
# Photos between returns of freed heap to the OS: often enough to keep a long run flat,
# rarely enough that the next batch does not pay for faulting its buffers back in.
_TRIM_EVERY = 64


@dataclass
class _Item:
    """One photo on its way through the pipeline."""

    index: int
    source: str
    sha256: str | None
    gate_input: torch.Tensor | None = None
    ident_input: torch.Tensor | None = None
    error: InvalidImageError | None = None


class Pipeline:
    """Gate, identifier and an optional gallery, used together.

    Args:
        identifier: Makes the embeddings (and, with a head, closed-set candidates).
        gate: Rejects non-cetacean photos; ``None`` accepts everything.
        gallery: Known individuals; when absent, candidates come from the head.
        embedding_kind: ``"embedding"`` (trained) or ``"features"`` (general).
        top_k: Candidates per prediction.
    """

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
        self.gallery: Gallery | None = None
        if gallery is not None:
            self.attach_gallery(gallery)

    # --- construction -------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | os.PathLike[str] | None = None,
        *,
        gallery: str | os.PathLike[str] | Gallery | None = None,
        gate: str | os.PathLike[str] | Gate | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        device: str | torch.device | None = None,
        embedding_kind: EmbeddingKind | None = None,
    ) -> Pipeline:
        """Build a pipeline.

        Args:
            name_or_dir: ``None`` for the production weights on the Hub (the EcoMarineAI
                identifier and the OpenCLIP gate, fetched lazily); ``"embedded"`` for the
                bundled offline weights; a folder written by :meth:`save_pretrained`; or
                an identifier folder / Hub repo (with the embedded gate).
            gallery: A gallery folder or object to attach.
            gate: Override the gate (``"embedded"``, a folder, a repo, or a :class:`Gate`).
            revision: Hub revision.
            cache_dir: Hub cache folder.
            token: Hub token for private repositories.
            local_files_only: Never touch the network (also ``HF_HUB_OFFLINE=1``).
            device: Where to run; default: CUDA, then MPS, then CPU.
            embedding_kind: Which embedding the gallery uses; default from the saved
                pipeline, else ``"embedding"``.

        Raises:
            WeightsNotFoundError: Offline without a cached copy, or missing files.
        """
        kw: dict[str, Any] = {
            "revision": revision,
            "cache_dir": cache_dir,
            "local_files_only": local_files_only,
            "token": token,
            "device": device,
        }
        kind: EmbeddingKind = embedding_kind or "embedding"
        gate_obj: Gate | None
        if name_or_dir is None:
            identifier = Identifier.from_pretrained(DEFAULT_MODEL, **kw)
            gate_obj = _production_gate(cache_dir) if gate is None else _load_gate(gate, kw)
        elif os.fspath(name_or_dir) == "embedded":
            identifier = Identifier.from_pretrained("embedded", device=device)
            gate_obj = _load_gate(gate or "embedded", kw)
        else:
            folder = Path(os.fspath(name_or_dir))
            if (folder / PIPELINE_CONFIG).is_file():
                cfg = read_json(folder / PIPELINE_CONFIG)
                if not isinstance(cfg, dict):
                    raise ConfigError(f"{folder / PIPELINE_CONFIG}: expected a JSON object")
                identifier = Identifier.from_pretrained(
                    _sub(folder, cfg.get("identifier", "identifier")), **kw
                )
                gate_obj = _load_gate(gate or _sub(folder, cfg.get("gate", "gate")), kw)
                kind = embedding_kind or cfg.get("embedding_kind", "embedding")
                if gallery is None and cfg.get("gallery"):
                    gallery = folder / str(cfg["gallery"])
            else:
                identifier = Identifier.from_pretrained(name_or_dir, **kw)
                gate_obj = _load_gate(gate or "embedded", kw)
        gal: Gallery | None = None
        if isinstance(gallery, Gallery):
            gal = gallery
        elif gallery is not None:
            gal = Gallery.load(gallery, expected_fingerprint=identifier.fingerprint(kind))
        return cls(identifier, gate_obj, gal, embedding_kind=kind)

    def attach_gallery(self, gallery: Gallery) -> None:
        """Attach a gallery, checking that it holds this identifier's kind of vectors.

        Raises:
            GalleryError: When the gallery was built by another model or embedding kind.
        """
        from .errors import GalleryError  # noqa: PLC0415

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
        """An empty gallery for this pipeline's identifier, with its shipped threshold."""
        return Gallery(
            fingerprint=self.identifier.fingerprint(self.embedding_kind),
            embedding_kind=self.embedding_kind,
            new_individual_threshold=self.identifier.threshold_for(self.embedding_kind),
            model_name=self.identifier.config.name,
        )

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

    def push_to_hub(
        self, repo_id: str, *, token: str | None = None, private: bool | None = None
    ) -> str:
        """Save to a temporary folder and upload it; return the commit URL."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return hub.upload_folder(Path(tmp), repo_id, token=token, private=private)

    # --- catalogue ----------------------------------------------------------------------

    def enroll(
        self,
        images: Sequence[ImageSource],
        individual_ids: Sequence[str],
        species: Sequence[str | None] | str | None = None,
        metadata: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        batch_size: int = 32,
    ) -> list[str]:
        """Embed photos of known individuals into the attached gallery (created if needed).

        Raises:
            InvalidImageError: If a photo cannot be read (nothing is added then).
        """
        if len(images) != len(individual_ids):
            raise ConfigError("enroll needs one individual id per image")
        emb = self.identifier.embed(images, batch_size=batch_size, kind=self.embedding_kind)
        meta = [dict(m or {}) for m in (metadata or [None] * len(images))]
        for m, src in zip(meta, images, strict=True):
            m.setdefault("source", describe_source(src))
        if self.gallery is None:
            self.gallery = self.new_gallery()
        return self.gallery.add(emb, individual_ids, species, meta)

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
                data = _read_file(Path(os.fspath(source)), name)
            if isinstance(data, bytes | bytearray | memoryview):
                digest = hashlib.sha256(data).hexdigest()
            pixels = load_pixels(data, self._decode_size())
        except InvalidImageError as exc:
            return _Item(index, name, digest, error=exc.renamed(name))
        ident_pp = self.identifier.config.preprocess
        ident_input = resize_pixels(pixels, ident_pp)
        gate_input = None
        if self.gate is not None:
            gate_pp = self.gate.config.preprocess
            gate_input = ident_input if gate_pp == ident_pp else resize_pixels(pixels, gate_pp)
        return _Item(index, name, digest, gate_input, ident_input)

    def _decode_size(self) -> tuple[int, int]:
        configs: list[PreprocessConfig] = [self.identifier.config.preprocess]
        if self.gate is not None:
            configs.append(self.gate.config.preprocess)
        return decode_size(configs)

    def _run_batch(self, items: list[_Item]) -> Iterator[Prediction]:
        ok = [it for it in items if it.error is None]
        gate_scores: dict[int, float] = {}
        accepted = ok
        device = self.identifier.device
        if self.gate is not None and ok:
            gate_in = _stack([it.gate_input for it in ok], self.gate.config.preprocess, device)
            scores = self.gate.score_tensor(gate_in)
            gate_scores = {it.index: float(s) for it, s in zip(ok, scores.tolist(), strict=True)}
            accepted = [it for it in ok if gate_scores[it.index] >= self.gate.threshold]
        answers: dict[int, Prediction] = {}
        if accepted:
            pp = self.identifier.config.preprocess
            batch = _stack([it.ident_input for it in accepted], pp, device)
            emb = self.identifier.embed_tensor(batch, self.embedding_kind)
            for it, pred in zip(accepted, self._identify(emb, accepted, gate_scores), strict=True):
                answers[it.index] = pred
        model_id = self.identifier.config.name
        for it in items:
            if it.index in answers:
                yield answers[it.index]
            elif it.error is not None:
                reason = (
                    "image_too_large"
                    if isinstance(it.error, ImageTooLargeError)
                    else "unreadable_image"
                )
                yield Prediction(
                    source=it.source,
                    is_cetacean=False,
                    gate_score=None,
                    rejection_reason=reason,
                    error=str(it.error),
                    sha256=it.sha256,
                    model_id=model_id,
                )
            else:
                yield Prediction(
                    source=it.source,
                    is_cetacean=False,
                    gate_score=gate_scores.get(it.index),
                    rejection_reason="not_cetacean",
                    sha256=it.sha256,
                    model_id=model_id,
                )

    def _identify(
        self, emb: torch.Tensor, items: list[_Item], gate_scores: dict[int, float]
    ) -> list[Prediction]:
        model_id = self.identifier.config.name
        out: list[Prediction] = []
        if self.gallery is not None and len(self.gallery):
            for it, ans in zip(
                items, self.gallery.identify(emb.cpu().numpy(), self.top_k), strict=True
            ):
                out.append(
                    Prediction(
                        source=it.source,
                        is_cetacean=True,
                        gate_score=gate_scores.get(it.index),
                        species=ans.species,
                        species_score=ans.species_score,
                        individual_id=ans.individual_id,
                        is_new_individual=ans.is_new_individual,
                        candidates=ans.candidates,
                        new_individual_threshold=ans.threshold,
                        sha256=it.sha256,
                        model_id=model_id,
                    )
                )
            return out
        ranked: list[list[Match]] = [[] for _ in items]
        if self.identifier.head is not None and self.embedding_kind == "embedding":
            ranked = self.identifier.matches_from_embeddings(emb, self.top_k)
        for it, cands in zip(items, ranked, strict=True):
            best = cands[0] if cands else None
            out.append(
                Prediction(
                    source=it.source,
                    is_cetacean=True,
                    gate_score=gate_scores.get(it.index),
                    species=best.species if best else None,
                    species_score=best.score if best and best.species else None,
                    individual_id=best.individual_id if best else None,
                    candidates=tuple(cands),
                    sha256=it.sha256,
                    model_id=model_id,
                )
            )
        return out


def _stack(
    inputs: Sequence[torch.Tensor | None], pp: PreprocessConfig, device: torch.device
) -> torch.Tensor:
    present = [x for x in inputs if x is not None]
    if len(present) != len(inputs):  # pragma: no cover - _prepare always fills both
        raise ConfigError("internal error: a decoded image lacks its network input")
    return normalize_batch(present, pp, device)


def _read_file(path: Path, name: str) -> bytes:
    if not path.exists():
        raise InvalidImageError(name, "no such file")
    if path.is_dir():
        raise InvalidImageError(name, "is a directory, not an image file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidImageError(name, f"cannot open file ({exc.strerror or exc})") from exc


def _sub(folder: Path, value: object) -> str:
    text = str(value)
    return text if text == "embedded" else str(folder / text)


def _load_gate(gate: str | os.PathLike[str] | Gate | None, kw: dict[str, Any]) -> Gate | None:
    if gate is None or isinstance(gate, Gate):
        return gate
    if os.fspath(gate) == "None":
        return None
    return Gate.from_pretrained(gate, **kw)


def _production_gate(cache_dir: str | os.PathLike[str] | None) -> Gate:
    from ._gate_clip import clip_gate  # noqa: PLC0415

    if hub.is_offline():
        from .errors import WeightsNotFoundError  # noqa: PLC0415

        raise WeightsNotFoundError(
            "the production CLIP gate is downloaded from the Hub, which is offline "
            '(HF_HUB_OFFLINE); use Pipeline.from_pretrained("embedded")'
        )
    model, tag = PRODUCTION_CLIP
    return clip_gate(model, tag, cache_dir=None if cache_dir is None else os.fspath(cache_dir))
