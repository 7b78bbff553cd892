"""Kinds of photo that ImageNet's 1,000 classes already know, grouped for the embedded gate.

The gate's generalisation to kinds of photo it was never fitted on comes mostly from here:
a seal or an otter puts its probability on ``sea lion``/``otter``, a boat on the ship
classes, an empty sea on ``seashore``/``promontory``. Summing the class probabilities of
each kind gives a dozen features whose meaning does not depend on the gate's small training
set, and names what a rejected photo looked like (:attr:`GateResult.looks_like`).

Indices are ImageNet-1k class indices (the order of timm's ``imagenet_classes``).
"""

from __future__ import annotations

from typing import Final

import torch

__all__ = ["CETACEAN", "KINDS", "KIND_NAMES", "kind_log_masses", "kind_masses", "looks_like"]

CETACEAN: Final = "cetacean"

#: Kind name -> ImageNet class indices. ``other`` (every class not listed) is implicit.
KINDS: Final[dict[str, tuple[int, ...]]] = {
    CETACEAN: (147, 148),  # grey whale, killer whale
    "sirenian": (149,),  # dugong
    "pinniped": (150, 360, 337),  # sea lion, otter, beaver
    "shark": (2, 3, 4),  # great white, tiger shark, hammerhead
    "fish": (0, 1, 5, 6, *range(389, 398)),  # tench, goldfish, rays, reef and river fish
    "reef": (107, 108, 109, 115, 116, *range(118, 127), 327, 328, 329, 973),
    "turtle_or_reptile": (33, 34, 35, 36, 37, 49, 50, 65),
    "bird": (*range(80, 101), *range(127, 147)),  # waterfowl, waders, seabirds, penguin
    "diver": (801, 983),  # snorkel, scuba diver
    "boat": (403, 472, 484, 510, 554, 576, 625, 628, 693, 694, 724, 780, 814, 833, 871, 913, 914),
    "empty_water_or_shore": (437, 460, 718, 970, 972, 974, 975, 976, 977, 978, 979),
    "screen_or_document": (446, 527, 549, 590, 620, 664, 681, 782, 851, 916, 917, 918, 921, 922),
}
#: Feature order of :func:`kind_log_masses`: the kinds above, then ``other``.
KIND_NAMES: Final = (*KINDS, "other")
_MIN_MASS = 1e-6


def _index() -> torch.Tensor:
    owner = torch.full((1000,), len(KINDS), dtype=torch.long)  # "other" by default
    for k, classes in enumerate(KINDS.values()):
        owner[list(classes)] = k
    return owner


_OWNER: Final = _index()


def kind_masses(logits: torch.Tensor) -> torch.Tensor:
    """``(B, len(KIND_NAMES))`` probability mass of each kind (rows sum to 1)."""
    p = torch.softmax(logits.float(), dim=1)
    out = torch.zeros(p.shape[0], len(KIND_NAMES), dtype=p.dtype, device=p.device)
    return out.index_add_(1, _OWNER.to(p.device), p)


def kind_log_masses(logits: torch.Tensor) -> torch.Tensor:
    """Log of :func:`kind_masses`, floored at 1e-6 (the gate head's semantic features)."""
    return kind_masses(logits).clamp(min=_MIN_MASS).log()


def looks_like(logits: torch.Tensor) -> list[str]:
    """The most probable named kind other than cetacean, per row (e.g. ``"pinniped"``).

    ``other`` is never the answer: it is most of the mass for many photos and says nothing.
    """
    masses = kind_masses(logits)
    masses[:, KIND_NAMES.index(CETACEAN)] = -1.0
    masses[:, KIND_NAMES.index("other")] = -1.0
    return [KIND_NAMES[int(i)] for i in masses.argmax(dim=1).tolist()]
