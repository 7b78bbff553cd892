"""Which species a photo shows, said only when the candidates give evidence for it.

A species vote over a catalogue that holds a single species says nothing about a photo
that matches none of its animals: a blue whale compared with a beluga catalogue still has
beluga candidates. So a species is reported when the photo was matched to a catalogued
individual (its species), or when the catalogue holds several species and the
score-weighted vote over the candidates is clear; otherwise it is left empty (Darwin Core
then falls back to the highest rank that is supported, Cetacea).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from .types import Match

__all__ = ["MIN_SPECIES_SHARE", "vote_species"]

#: Share of the score-weighted vote the leading species needs when no individual matched.
MIN_SPECIES_SHARE = 0.6


def vote_species(
    candidates: Sequence[Match],
    *,
    matched: str | None,
    catalogue_species: int,
    min_share: float = MIN_SPECIES_SHARE,
) -> tuple[str | None, float | None]:
    """The species with evidence for it, and its share of the vote.

    Args:
        candidates: Ranked candidates, best first.
        matched: The individual the photo was identified as, or ``None`` (new individual,
            or candidates that are only hints).
        catalogue_species: How many species the searched catalogue (or head) holds.
        min_share: Share the leading species needs when nothing matched.

    Returns:
        ``(species, share)``, or ``(None, None)`` when the evidence is too weak.
    """
    weights: dict[str, float] = defaultdict(float)
    for m in candidates:
        if m.species:
            weights[m.species] += max(m.score, 0.0) + 1e-9
    total = sum(weights.values())
    if not weights or not math.isfinite(total) or total <= 0:
        return None, None
    if matched is not None:
        own = next((m.species for m in candidates if m.individual_id == matched), None)
        return (own, weights[own] / total) if own else (None, None)
    if catalogue_species < 2:
        return None, None
    leader = max(weights, key=lambda s: weights[s])
    share = weights[leader] / total
    return (leader, share) if share >= min_share else (None, None)
