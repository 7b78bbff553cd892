"""Model cards (``README.md``) written next to saved weights."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .identifier import Identifier

__all__ = ["calibration_section", "identifier_card"]


def calibration_section(calibration: dict[str, Any]) -> list[str]:
    """Card lines for open-set calibration results (none when there are none)."""
    if not calibration:
        return []
    return ["", "### Open-set calibration", "", "```json", json.dumps(calibration, indent=1), "```"]


def identifier_card(model: Identifier, *, extra: str = "") -> str:
    """Return a Hugging Face model card for an identifier."""
    cfg = model.config
    pp = cfg.preprocess
    head = (
        "none"
        if model.head is None
        else f"{cfg.head.type if cfg.head else ''} over {len(model.labels)} individuals"
    )
    provenance = []
    if cfg.license or cfg.source:
        provenance = [
            f"- weights: imported from `{cfg.source or 'unknown'}`, licensed "
            f"`{cfg.license or 'not stated'}` (the publisher's terms apply to this copy)"
        ]
    lines = [
        "---",
        *([f"license: {cfg.license}"] if cfg.license else []),
        "library_name: ecomarine",
        "tags:",
        "- ecomarine",
        "- photo-identification",
        "- cetacean",
        "- image-feature-extraction",
        "---",
        "",
        f"# {cfg.name}",
        "",
        "An ecomarine identifier: photo-identification embeddings for whales and dolphins.",
        "",
        "```python",
        "from ecomarine import Identifier",
        'ident = Identifier.from_pretrained("<this repo or folder>")',
        'emb = ident.embed(["photo.jpg"])  # (N, D) unit-norm float32',
        "```",
        "",
        "## Architecture",
        "",
        f"- backbone: `{cfg.backbone}` ({model.num_features} features), pooling `{cfg.pooling}`",
        f"- neck: `{cfg.neck}`, embedding size {model.embedding_size}",
        f"- head: {head}",
        f"- input: {pp.height}x{pp.width} ({pp.resize}, {pp.interpolation}), "
        f"mean {list(pp.mean)}, std {list(pp.std)}",
        f"- test-time flip: {_flip(cfg.test_time_flip)}",
        f"- new-individual threshold: {cfg.threshold_for('embedding')} (embedding), "
        f"{cfg.threshold_for('features')} (features)",
        *provenance,
        "",
        f"Written by ecomarine {__version__}.",
        "",
    ]
    if extra:
        lines += [extra.rstrip(), ""]
    lines += ["## Config", "", "```json", json.dumps(cfg.to_dict(), indent=2), "```", ""]
    return "\n".join(lines)


def _flip(on: bool) -> str:
    return "on (each vector averaged with its mirror image's)" if on else "off"
