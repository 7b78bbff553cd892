"""Re-embed a gallery's photos with another model, keeping everything else.

A gallery's vectors belong to the model that made them (its fingerprint). When the model
changes -- new weights, or the same weights with another test-time setting -- the
catalogue does not: :func:`rebuild_gallery` reads every photo again from the source its
record names, checks it is the same photo (its SHA-256, when recorded), and returns a new
gallery with the new vectors and the same image ids, individuals, species and metadata.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from .errors import GalleryError, InvalidImageError
from .gallery import Gallery
from .identifier import Identifier
from .io import content_sha256
from .types import EmbeddingKind

__all__ = ["rebuild_gallery", "resolve_sources"]

logger = logging.getLogger(__name__)


def resolve_sources(gallery: Gallery, images: str | os.PathLike[str] | None = None) -> list[Path]:
    """The file of every record, checked against its recorded SHA-256.

    Args:
        gallery: The gallery whose records name their photos (``metadata["source"]``).
        images: The folder relative sources are read from (a catalogue's ``--images``);
            ``None``: the current directory.

    Raises:
        GalleryError: When a record names no source, its file is missing or unreadable,
            or its bytes differ from the recorded hash (it names the first few of each).
    """
    root = Path(images) if images is not None else Path()
    paths: list[Path] = []
    problems: list[str] = []
    for rec in gallery.records():
        source = str(rec["metadata"].get("source", ""))
        if not source or source.startswith("<"):  # bytes or arrays were added: no file
            problems.append(f"{rec['image_id']}: no file recorded")
            paths.append(Path())
            continue
        path = Path(source) if Path(source).is_absolute() else root / source
        paths.append(path)
        recorded = rec["metadata"].get("sha256")
        try:
            digest = content_sha256(path)
        except InvalidImageError as exc:
            problems.append(f"{rec['image_id']}: {exc}")
            continue
        if recorded and digest != recorded:
            problems.append(f"{rec['image_id']}: {path} is not the photo that was added")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise GalleryError(
            f"cannot re-embed {len(problems)} of {len(gallery)} photos: "
            + "; ".join(problems[:3])
            + more
        )
    return paths


def rebuild_gallery(
    gallery: Gallery,
    identifier: Identifier,
    *,
    images: str | os.PathLike[str] | None = None,
    kind: EmbeddingKind | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Gallery:
    """A new gallery: the same records, their photos embedded by ``identifier``.

    Nothing is written; ``gallery`` is not changed. Every photo is checked before any is
    embedded (:func:`resolve_sources`). An explicit threshold override of the old gallery
    was chosen on the old vectors, so it is not carried over (logged); the new gallery
    follows the model's calibrated threshold until it is calibrated again.

    Args:
        gallery: The gallery to rebuild (load it without ``expected_fingerprint``).
        identifier: The model to embed with.
        images: Folder of relative sources (see :func:`resolve_sources`).
        kind: Embedding kind of the new gallery (default: the old gallery's).
        batch_size: Photos per network pass.
        num_workers: Decode threads.
        progress: Called with the number of photos embedded after each batch.

    Raises:
        GalleryError: An empty gallery, or photos that cannot be re-read.
        InvalidImageError: A photo that no longer decodes.
    """
    if not len(gallery):
        raise GalleryError("the gallery is empty: nothing to rebuild")
    kind = kind or gallery.embedding_kind
    paths = resolve_sources(gallery, images)
    vectors = identifier.embed(
        paths, batch_size=batch_size, kind=kind, num_workers=num_workers, progress=progress
    )
    if gallery.new_individual_threshold is not None:
        logger.warning(
            "the gallery's threshold override %.3f was chosen on the old vectors and is not "
            "carried over; calibrate the rebuilt gallery again",
            gallery.new_individual_threshold,
        )
    out = Gallery(
        fingerprint=identifier.fingerprint(kind),
        embedding_kind=kind,
        index_kind=gallery.index_kind,
        use_faiss=gallery.use_faiss,
        aggregation=gallery.aggregation,
        model_name=identifier.config.name,
    )
    records = gallery.records()
    out.add(
        vectors,
        [r["individual_id"] for r in records],
        [r["species"] for r in records],
        [r["metadata"] for r in records],
        image_ids=[r["image_id"] for r in records],
    )
    return out
