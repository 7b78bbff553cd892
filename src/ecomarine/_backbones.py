"""The network a config names: a timm model, or an open_clip image tower.

One owner for building it, used by the identifier (real weights) and by the layout
converters (on the meta device, to read shapes and convert checkpoints).
"""

from __future__ import annotations

from typing import Any

import timm

from .config import IdentifierConfig
from .errors import ConfigError

__all__ = ["build_backbone"]


def build_backbone(config: IdentifierConfig, *, where: str = "", noun: str = "backbone") -> Any:
    """The backbone of ``config``, with random weights (no download).

    Args:
        config: The identifier's config (``family``, ``backbone``, ``backbone_args``,
            ``backbone_num_classes``).
        where: A prefix for messages (the file or repository).
        noun: What the config calls the timm name, for messages.

    Raises:
        ConfigError: An unknown timm name, or arguments timm refuses.
    """
    if config.family == "open_clip":
        from ._clip_tower import ClipTower  # noqa: PLC0415 - optional dependency

        return ClipTower(config.backbone_args)
    # Checked here, not by catching timm's errors: a failure inside a known model (out of
    # memory, say) must not be reported as an unknown name.
    if not timm.is_model(config.backbone):
        raise ConfigError(f"{where}unknown timm {noun} {config.backbone!r}")
    try:
        return timm.create_model(
            config.backbone,
            pretrained=False,
            num_classes=config.backbone_num_classes,
            **dict(config.backbone_args),
        )
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(
            f"{where}timm cannot build {config.backbone!r} with {config.backbone_args}: {exc}"
        ) from exc
