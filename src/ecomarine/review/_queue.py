"""The review queue: accepted predictions or sightings, most uncertain first, with photos.

Only photos that the results or the gallery name are ever served, and only from inside
their folder (the results file's folder; the catalogue's photo root): a path that climbs
out, a link that points out, or a missing file is shown as "photo not available".
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from ..gallery import Gallery
from ..types import Match, Prediction, SightingPrediction
from ._decisions import review_key

__all__ = ["PhotoRegistry", "ReviewItem", "build_queue"]

#: Catalogue photos shown per candidate, and candidates shown per item.
PHOTOS_PER_CANDIDATE = 3
MAX_CANDIDATES = 5


class PhotoRegistry:
    """Opaque tokens for the photos the page may show; nothing else is served."""

    def __init__(self) -> None:
        self._paths: dict[str, Path] = {}

    def add(self, name: str, root: Path) -> str | None:
        """A token for ``name``, or ``None``.

        A relative ``name`` is looked up against ``root`` and then the working folder (a
        results file written by ``ecomarine identify season/ --output season/r.jsonl``
        names its photos ``season/…``). ``None`` when the file is missing, not a regular
        file, or resolves outside ``root``.
        """
        if not name or "\x00" in name:
            return None
        path = Path(name)
        tries = [path] if path.is_absolute() else [root / path, Path.cwd() / path]
        for candidate in tries:
            try:
                real = candidate.resolve(strict=True)
                inside = real.is_relative_to(root.resolve(strict=True))
            except (OSError, RuntimeError, ValueError):
                continue
            if inside and real.is_file():
                token = hashlib.sha256(str(real).encode("utf-8", "surrogateescape")).hexdigest()[
                    :20
                ]
                self._paths[token] = real
                return token
        return None

    def path(self, token: str) -> Path | None:
        """The file behind a token."""
        return self._paths.get(token)


@dataclass
class ReviewItem:
    """One thing to review: a photo or a sighting, with what the model proposed.

    Attributes:
        item_id: Stable id (the photo's content hash or source; the sighting id).
        kind: ``"photo"`` or ``"sighting"``.
        title: What to show as its name.
        photos: The query photos: ``{"name", "token"}`` (``token`` None: not available).
        candidates: ``{"individual_id", "score", "probability", "species", "photos"}``.
        p_known: Calibrated probability the animal is catalogued, when known.
        candidate_set: The conformal set, when known.
        model_says: The model's verdict (an id, ``"new individual"``).
        uncertainty: In [0, 1]: 1 is a coin toss (the queue's order, highest first).
        suggested_new_id: An id to offer for "new individual".
    """

    item_id: str
    kind: str
    title: str
    photos: list[dict[str, Any]]
    candidates: list[dict[str, Any]]
    p_known: float | None
    candidate_set: list[str] | None
    model_says: str
    uncertainty: float
    suggested_new_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (for the page)."""
        return dict(self.__dict__)


def _uncertainty(record: Prediction | SightingPrediction) -> float:
    if record.p_known is not None:
        return 1.0 - abs(2.0 * record.p_known - 1.0)
    scores = [c.score for c in record.candidates]
    if len(scores) >= 2:
        return max(0.0, 1.0 - 4.0 * (scores[0] - scores[1]))  # a close runner-up: unsure
    return 0.5


def _shown(record: Prediction | SightingPrediction) -> list[Match]:
    cands = list(record.candidates)
    if record.candidate_set is not None:
        named = set(record.candidate_set)
        in_set = [c for c in cands if c.individual_id in named]
        cands = in_set or cands[:1]
    return cands[:MAX_CANDIDATES]


def build_queue(
    records: Sequence[Prediction | SightingPrediction],
    gallery: Gallery | None,
    photos: PhotoRegistry,
    *,
    results_root: Path,
    gallery_root: Path,
) -> list[ReviewItem]:
    """Review items for the accepted records, most uncertain first.

    Args:
        records: What ``ecomarine identify`` wrote (photos or sightings).
        gallery: The catalogue the candidates come from (for their photos).
        photos: Where photo tokens are registered.
        results_root: Folder that query photo paths are relative to (and confined to).
        gallery_root: Folder that catalogue photo paths are relative to (and confined to).
    """
    by_individual: dict[str, list[dict[str, Any]]] = {}
    if gallery is not None:
        for rec in gallery.records():
            by_individual.setdefault(rec["individual_id"], []).append(rec)
    items: list[ReviewItem] = []
    seen: set[str] = set()
    for index, record in enumerate(records):
        if not record.accepted:
            continue
        item_id = review_key(record, index)
        if isinstance(record, SightingPrediction):
            kind, title = "sighting", record.sighting_id
            names = [p.source or "" for p in record.photos if p.accepted]
        else:
            kind = "photo"
            title = Path(record.source or f"photo {index + 1}").name
            names = [record.source or ""]
        if item_id in seen:
            continue
        seen.add(item_id)
        candidates = []
        for match in _shown(record):
            recs = by_individual.get(match.individual_id, [])
            # The catalogue photo that matched best first, then the others.
            recs = sorted(recs, key=lambda r: r["image_id"] != match.image_id)
            shown = []
            for r in recs[:PHOTOS_PER_CANDIDATE]:
                md = r["metadata"]
                name = str(md.get("source", ""))
                place = None
                if md.get("latitude") is not None and md.get("longitude") is not None:
                    place = f"{md['latitude']}, {md['longitude']}"
                shown.append(
                    {
                        "name": Path(name).name or r["image_id"],
                        "token": photos.add(name, gallery_root),
                        "date": md.get("date"),
                        "place": place,
                    }
                )
            candidates.append(
                {
                    "individual_id": match.individual_id,
                    "score": round(float(match.score), 4),
                    "probability": None
                    if match.probability is None
                    else round(match.probability, 4),
                    "species": match.species,
                    "photos": shown,
                }
            )
        verdict = (
            "new individual" if record.is_new_individual else (record.individual_id or "unmatched")
        )
        items.append(
            ReviewItem(
                item_id=item_id,
                kind=kind,
                title=title,
                photos=[
                    {"name": Path(n).name or n, "token": photos.add(n, results_root)} for n in names
                ],
                candidates=candidates,
                p_known=None if record.p_known is None else round(record.p_known, 4),
                candidate_set=None if record.candidate_set is None else list(record.candidate_set),
                model_says=verdict,
                uncertainty=round(_uncertainty(record), 4),
            )
        )
    items.sort(key=lambda it: -it.uncertainty)  # stable: ties keep the results' order
    stamp = date.today().strftime("%Y%m%d")
    for n, item in enumerate(items, 1):
        item.suggested_new_id = f"new-{stamp}-{n:03d}"
    return items
