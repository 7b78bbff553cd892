"""Ensembles: several separately trained identifiers combined into one.

Identifiers fine-tuned on a small catalogue vary a lot from run to run (seed, input
size), and their errors differ; concatenating their unit-norm embeddings averages their
cosine similarities, which ranks individuals better than any one of them. The result is
an ordinary :class:`~ecomarine.identifier.Identifier` (``config.members > 1``): it saves,
loads, embeds, builds galleries and runs in a pipeline like a single network.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .calibration import calibrate_identifier
from .errors import ConfigError
from .identifier import Identifier
from .model_card import calibration_section, identifier_card

if TYPE_CHECKING:
    from .catalog import Sample

__all__ = [
    "build_ensemble",
    "ensemble_card",
    "ensemble_identifiers",
    "ensemble_members",
    "round_weights",
]

logger = logging.getLogger(__name__)

# Config fields that every member must share (the rest is per-model metadata).
_SHARED = ("backbone", "pooling", "neck", "embedding_size", "preprocess", "backbone_num_classes")


def ensemble_identifiers(models: Sequence[Identifier], *, name: str) -> Identifier:
    """Combine identifiers of one architecture into an ensemble.

    The ensemble's embedding is the concatenation of the members' unit-norm embeddings
    divided by ``sqrt(len(models))``: unit norm, and its cosine similarity is the mean
    of the members' similarities. The same holds for the ``"features"`` kind.

    When every member has an ArcFace head over the same individuals, the ensemble gets
    one too: each class's normalised member weights, concatenated, so that its cosines
    are again the members' mean (``classify`` keeps working). Otherwise (different
    labels, sub-centre heads, no heads) the ensemble has no head.

    Open-set thresholds are not carried over: an ensemble's similarities have their own
    scale, so calibrate it on held-out data (for example with
    :func:`ecomarine.calibration.calibrate_identifier`).

    An ensemble among ``models`` contributes its networks one by one
    (:func:`ensemble_members`), so that every network weighs the same: an ensemble of
    two combined with a third model is an ensemble of three.

    Args:
        models: Identifiers (single networks or ensembles), two networks in all at least.
        name: The ensemble's model name.

    Raises:
        ConfigError: Fewer than two networks, or members whose architecture or
            preprocessing differ (the message names the field).
    """
    models = [member for model in models for member in ensemble_members(model)]
    if len(models) < 2:
        raise ConfigError("an ensemble needs at least two identifiers")
    first = models[0].config
    for i, model in enumerate(models):
        for key in _SHARED:
            if getattr(model.config, key) != getattr(first, key):
                raise ConfigError(
                    f"identifier {i} differs from identifier 0 in {key!r}: "
                    f"{getattr(model.config, key)!r} vs {getattr(first, key)!r}"
                )
    head = first.head if _heads_combine(models) else None
    species: dict[str, str] = {}
    for model in models:
        species.update(model.species_by_id)
    config = first.replace(members=len(models), head=head, new_individual_thresholds={}, name=name)
    return Identifier.from_networks(
        config,
        [m.networks()[0] for m in models],
        labels=models[0].labels if head is not None else (),
        species=species if head is not None else None,
        head_weights=[m.network_head_weights()[0] for m in models] if head is not None else None,
    )


def ensemble_members(model: Identifier) -> list[Identifier]:
    """The single networks of an ensemble (a single network: itself, alone).

    Each member keeps its backbone, pooling and neck weights exactly; a combined ArcFace
    head gives each member its own slice of the class weights (the normalised weights
    it was built from). Thresholds are not carried over (calibrate a member before
    using it alone), and names get a ``-memberN`` suffix.
    """
    n = model.config.members
    if n == 1:
        return [model]
    config = model.config.replace(members=1, new_individual_thresholds={})
    heads = model.network_head_weights() if model.head is not None else None
    return [
        Identifier.from_networks(
            config.replace(name=f"{config.name}-member{i}"),
            [network],
            labels=model.labels if heads is not None else (),
            species=model.species_by_id if heads is not None else None,
            head_weights=[heads[i]] if heads is not None else None,
        )
        for i, network in enumerate(model.networks())
    ]


def _heads_combine(models: Sequence[Identifier]) -> bool:
    heads = [m.config.head for m in models]
    if any(h is None or h.type != "arcface" for h in heads):
        logger.info("ensemble without a head: members lack plain ArcFace heads")
        return False
    if any(h != heads[0] for h in heads) or any(m.labels != models[0].labels for m in models):
        logger.info("ensemble without a head: members' heads or individuals differ")
        return False
    return True


def round_weights(model: Identifier, dtype: torch.dtype) -> Identifier:
    """Round floating-point weights to ``dtype`` and back, in place.

    The model then computes exactly what it will after ``save_pretrained(dtype=dtype)``
    and loading, so thresholds calibrated on it hold for the saved file.
    """
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(dtype).to(tensor.dtype))
    return model


def build_ensemble(
    models: Sequence[Identifier],
    *,
    name: str,
    train_samples: Sequence[Sample] | None = None,
    calibration_samples: Sequence[Sample] | None = None,
    new_fraction: float | None = None,
    dtype: torch.dtype | None = torch.float16,
    workers: int | None = None,
) -> tuple[Identifier, dict[str, Any]]:
    """Combine members, round the weights for storage, and calibrate the open-set thresholds.

    Args:
        models: Single-network identifiers (see :func:`ensemble_identifiers`).
        name: The ensemble's model name.
        train_samples: The members' training images (the calibration gallery).
        calibration_samples: Held-out queries; with ``train_samples``, the thresholds
            are calibrated (:func:`ecomarine.calibration.calibrate_identifier`), else the
            ensemble has none.
        new_fraction: Expected share of new individuals among future queries.
        dtype: Storage type the weights are rounded to (``None``: keep float32).
        workers: Decode threads.

    Returns:
        The ensemble and the calibration results (``{}`` when not calibrated).
    """
    ensemble = ensemble_identifiers(models, name=name)
    if dtype is not None:
        round_weights(ensemble, dtype)
    if not train_samples or not calibration_samples:
        logger.warning("ensemble %s has no open-set thresholds (no calibration data)", name)
        return ensemble, {}
    calibration = calibrate_identifier(
        ensemble, train_samples, calibration_samples, new_fraction=new_fraction, workers=workers
    )
    return ensemble, calibration


def ensemble_card(
    model: Identifier, command: str, members: Sequence[str | Path], calibration: dict[str, Any]
) -> str:
    """A model card naming the command that built the ensemble and each member's training."""
    lines = [
        "## Ensemble",
        "",
        f"{model.config.members} networks of one architecture, trained separately; the embedding",
        "concatenates their unit-norm embeddings, so its cosine similarity is the mean of",
        "the members' similarities.",
        "",
        "```bash",
        command,
        "```",
        "",
        "Models combined and their training commands:",
        "",
        *(f"- `{m}`: `{_training_command(Path(m))}`" for m in members),
        *calibration_section(calibration),
    ]
    return identifier_card(model, extra="\n".join(lines))


def _training_command(folder: Path) -> str:
    try:
        data = json.loads((folder / "training.json").read_text(encoding="utf-8"))
        return str(data["config"]["command"])
    except (OSError, KeyError, TypeError, ValueError):
        return "unknown (no training.json)"
