"""Plain data that loaders and converters return, and builders turn into objects.

Converters (the bundled weights, the legacy EcoMarineAI layout, a saved folder) return
these; :func:`ecomarine.identifier.build_identifier` and
:func:`ecomarine.gate.build_gate` check them and build the object. No converter imports
the classes it feeds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import IdentifierConfig

if TYPE_CHECKING:
    from torch import Tensor

    from ._gate_base import GateConfig
    from .hub import HubLocation

__all__ = ["GateParts", "IdentifierParts"]


@dataclass(frozen=True)
class IdentifierParts:
    """Everything an :class:`~ecomarine.identifier.Identifier` is built from.

    Attributes:
        config: Architecture, preprocessing and thresholds.
        state: Tensors under the identifier's own key names (checked when building).
        labels: Individual id per head row.
        species: Species per individual id.
        where: Where the parts came from, for messages.
    """

    config: IdentifierConfig
    state: Mapping[str, Tensor]
    labels: tuple[str, ...] = ()
    species: Mapping[str, str] = field(default_factory=dict)
    where: str = "weights"


@dataclass(frozen=True)
class GateParts:
    """Everything a :class:`~ecomarine.gate.Gate` is built from.

    Attributes:
        config: The gate's config (backend, threshold, preprocessing, prompts).
        tensors: The backend's saved tensors (empty for the unfitted embedded gate).
        location: Where the files came from (the CLIP backend resolves its model there).
        where: The weights file, for messages.
    """

    config: GateConfig
    tensors: Mapping[str, Tensor]
    location: HubLocation | None = None
    where: str = "gate"
