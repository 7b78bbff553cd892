"""A self-contained HTML contact sheet of results: each query beside its candidates.

Every photo is embedded as a small JPEG (``data:`` URI), so the file opens anywhere with no
server and can be mailed to a colleague. Ids and names are HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from .._atomic import atomic_write_text
from ..errors import EcomarineError
from ..gallery import Gallery
from ..io import load_image
from ..types import Prediction, SightingPrediction
from ._queue import PhotoRegistry, build_queue

__all__ = ["contact_sheet"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1rem; color: #111; }
.item { border-top: 2px solid #444; padding: 0.6rem 0; }
.row { display: flex; gap: 0.5rem; flex-wrap: wrap; align-items: flex-start; margin: 0.3rem 0; }
.label { min-width: 12rem; max-width: 16rem; overflow-wrap: anywhere; font-size: 0.9rem; }
figure { margin: 0; } img { border: 1px solid #999; }
figcaption { font-size: 0.75rem; max-width: 200px; overflow-wrap: anywhere; }
.missing { display: inline-block; width: 120px; height: 90px; border: 1px dashed #999;
  font-size: 0.75rem; padding: 0.3rem; }
"""


def _thumb(path: Path | None, side: int) -> str | None:
    if path is None:
        return None
    try:
        img = load_image(path)
    except (OSError, ValueError, EcomarineError):  # shown as missing; never fails the sheet
        return None
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(uri: str | None, caption: str) -> str:
    cap = html.escape(caption)
    if uri is None:
        return f'<figure><span class="missing">photo not available</span><figcaption>{cap}</figcaption></figure>'
    return f'<figure><img src="{uri}" alt="{cap}"><figcaption>{cap}</figcaption></figure>'


def contact_sheet(
    records: Sequence[Prediction | SightingPrediction],
    out: str | os.PathLike[str],
    *,
    gallery: Gallery | None,
    results_root: Path,
    gallery_root: Path,
    title: str = "ecomarine contact sheet",
    thumbnail: int = 200,
) -> Path:
    """Write the contact sheet (atomically) and return its path.

    Items come most uncertain first, as in the review app; each shows its query photos and
    the best catalogue photos of every candidate (the candidate set, when there is one).
    Photos are read only from inside ``results_root`` (queries) and ``gallery_root``
    (catalogue).
    """
    photos = PhotoRegistry()
    items = build_queue(
        records, gallery, photos, results_root=results_root, gallery_root=gallery_root
    )
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{len(items)} items, most uncertain first.</p>",
    ]
    for item in items:
        pk = "" if item.p_known is None else f" · p(known) {item.p_known:.2f}"
        head = f"{item.kind}: {item.title} · model says: {item.model_says}{pk}"
        parts.append(f'<section class="item"><h2>{html.escape(head)}</h2><div class="row">')
        parts.append('<div class="label">query</div>')
        for p in item.photos:
            uri = _thumb(photos.path(p["token"]) if p["token"] else None, thumbnail)
            parts.append(_figure(uri, p["name"]))
        parts.append("</div>")
        for c in item.candidates:
            prob = "" if c["probability"] is None else f" · p {c['probability']:.2f}"
            label = f"{c['individual_id']} · score {c['score']:.3f}{prob}"
            parts.append(f'<div class="row"><div class="label">{html.escape(label)}</div>')
            for p in c["photos"]:
                uri = _thumb(photos.path(p["token"]) if p["token"] else None, thumbnail)
                caption = " · ".join(str(x) for x in (p["name"], p["date"], p["place"]) if x)
                parts.append(_figure(uri, caption))
            parts.append("</div>")
        parts.append("</section>")
    parts.append("</body></html>")
    target = Path(out)
    atomic_write_text(target, "\n".join(parts) + "\n")
    return target
