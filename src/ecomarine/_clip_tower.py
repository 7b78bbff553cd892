"""An open_clip image tower as an identifier's backbone (optional extra ``clip``).

open_clip is imported only when such a tower is built. The tower's projected,
pooled output is the vector; it is built from the plain ``vision_cfg`` of the model's
``open_clip_config.json`` and never fetches weights itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from .errors import ConfigError

__all__ = ["ClipTower", "import_open_clip"]


def import_open_clip(what: str) -> Any:
    """The ``open_clip`` module, or a :class:`ConfigError` saying which extra installs it."""
    try:
        import open_clip  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise ConfigError(f"{what} needs open_clip: pip install 'ecomarine[clip]'") from exc
    return open_clip


class ClipTower(nn.Module):
    """An open_clip vision tower with timm's ``forward_features``/``forward_head`` names.

    Args:
        args: ``embed_dim``, ``vision_cfg`` (open_clip's ``CLIPVisionCfg`` fields) and
            optionally ``quick_gelu``.

    Raises:
        ConfigError: open_clip missing, or a ``vision_cfg`` it cannot build.
    """

    def __init__(self, args: Mapping[str, Any]) -> None:
        super().__init__()
        import_open_clip("an open_clip image tower")
        from open_clip.model import _build_vision_tower  # noqa: PLC0415

        embed_dim = args.get("embed_dim")
        vision_cfg = args.get("vision_cfg")
        if not isinstance(embed_dim, int) or not isinstance(vision_cfg, Mapping):
            raise ConfigError("an open_clip tower needs backbone_args embed_dim and vision_cfg")
        if vision_cfg.get("timm_model_pretrained"):
            raise ConfigError("vision_cfg may not ask for timm_model_pretrained (a download)")
        try:
            self.tower = _build_vision_tower(
                embed_dim, dict(vision_cfg), quick_gelu=bool(args.get("quick_gelu", False))
            )
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"open_clip cannot build this vision_cfg ({exc})") from exc
        self.num_features = embed_dim

    def forward_features(self, x: Tensor) -> Tensor:
        """The tower's pooled, projected output ``(B, embed_dim)``."""
        out: Tensor = self.tower(x)
        return out

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Identity: the tower already pools (timm's interface for ``pooling="backbone"``)."""
        del pre_logits
        return x
