"""The loading factory: from a source to checked plain data, for every kind of model.

Like timm's ``_builder``: each kind of source has a converter that returns plain data —
:class:`~ecomarine._parts.IdentifierParts` (config, state dict, labels) or
:class:`~ecomarine._parts.GateParts` — and one builder per class
(:func:`ecomarine.identifier.build_identifier`, :func:`ecomarine.gate.build_gate`) checks it
and builds the object. ``Identifier.from_pretrained`` and ``Gate.from_pretrained`` are that
pair: resolve here, build there.

Sources (see :func:`ecomarine._pretrained.resolve_source`):

* ``"embedded"`` / ``"embedded-imagenet"``: the weights bundled with the package;
* a folder or Hub repository in the ecomarine format (``config.json``,
  ``model.safetensors``, ``labels.json``; ``gate.json``, ``gate.safetensors``);
* a folder or Hub repository in the legacy EcoMarineAI layout (:mod:`ecomarine.legacy`);
* a folder or Hub repository published by timm (MegaDescriptor, DINOv2), MiewID or
  open_clip (:mod:`ecomarine._hub_layouts`, the documented ones in :mod:`ecomarine.zoo`).
"""

from __future__ import annotations

from pathlib import Path

from . import hub
from ._checkpoints import read_safetensors
from ._gate_base import EMBEDDED_GATE_DIR, GATE_CONFIG, GATE_WEIGHTS, GateConfig
from ._hub_layouts import (
    OPEN_CLIP_CONFIG,
    config_layout,
    read_miewid,
    read_open_clip,
    read_timm_hub,
)
from ._parts import GateParts, IdentifierParts
from ._pretrained import Bundled, Source
from .config import IdentifierConfig, PreprocessConfig, read_json
from .embedded import imagenet_parts, trained_embedded_dir
from .errors import ConfigError
from .legacy import read_legacy

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "LABELS_NAME",
    "WEIGHTS_NAME",
    "gate_parts",
    "identifier_parts",
    "read_safetensors",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LABELS_NAME = "labels.json"
CARD_NAME = "README.md"
#: Threshold of the unfitted embedded gate (grey-whale + killer-whale class mass).
CLASS_MASS_THRESHOLD = 0.05


def identifier_parts(source: Source, *, allow_pickle: bool = False) -> IdentifierParts:
    """Read an identifier's config, tensors and labels from any source.

    Args:
        source: A bundled name or a folder / Hub location.
        allow_pickle: Let a torch checkpoint (legacy, timm or open_clip ``.bin``) unpickle
            arbitrary objects (only for files you trust).

    Raises:
        WeightsNotFoundError: Missing files, or an offline cache miss.
        ConfigError: An invalid config or an unreadable weights file.
        UnsafeFileError: A legacy file needs unpickling and ``allow_pickle`` is False.
    """
    if isinstance(source, Bundled):
        folder = trained_embedded_dir() if source.name == "embedded" else None
        if folder is None:
            return imagenet_parts()
        source = hub.HubLocation(local_dir=folder)
    config_path = hub.fetch_file(source, CONFIG_NAME, required=False)
    if config_path is None:
        if hub.fetch_file(source, OPEN_CLIP_CONFIG, required=False) is not None:
            return read_open_clip(source, allow_pickle=allow_pickle)
        return read_legacy(source, allow_pickle=allow_pickle)
    data = read_json(config_path)
    layout = config_layout(data)
    if layout == "timm":
        return read_timm_hub(source, data, allow_pickle=allow_pickle)
    if layout == "miewid":
        return read_miewid(source, data, allow_pickle=allow_pickle)
    config = IdentifierConfig.from_dict(data, where=str(config_path))
    labels_path = hub.fetch_file(source, LABELS_NAME, required=config.head is not None)
    ids: tuple[str, ...] = ()
    species: dict[str, str] = {}
    if labels_path is not None:
        ids, species = _read_labels(labels_path)
    weights_path = hub.require_file(source, WEIGHTS_NAME)
    state = read_safetensors(weights_path)
    return IdentifierParts(config, state, ids, species, str(weights_path))


def gate_parts(source: Source) -> GateParts:
    """Read a gate's config and tensors from any source.

    ``"embedded"`` is the fitted embedded gate bundled with the package (or, when none is
    bundled, the unfitted class-mass gate, as is ``"embedded-imagenet"``).

    Raises:
        WeightsNotFoundError: Missing files, or an offline cache miss.
        ConfigError: An invalid ``gate.json`` or an unreadable weights file.
    """
    if isinstance(source, Bundled):
        if source.name == "embedded-imagenet" or not (EMBEDDED_GATE_DIR / GATE_CONFIG).is_file():
            config = GateConfig(
                backend="embedded", threshold=CLASS_MASS_THRESHOLD, preprocess=PreprocessConfig()
            )
            return GateParts(config, {}, None, "the unfitted embedded gate")
        source = hub.HubLocation(local_dir=EMBEDDED_GATE_DIR)
    config_path = hub.require_file(source, GATE_CONFIG)
    weights_path = hub.require_file(source, GATE_WEIGHTS)
    config = GateConfig.from_dict(read_json(config_path), where=str(config_path))
    return GateParts(config, read_safetensors(weights_path), source, str(weights_path))


def _read_labels(path: Path) -> tuple[tuple[str, ...], dict[str, str]]:
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("individual_ids"), list):
        raise ConfigError(f"{path}: expected {{'individual_ids': [...], 'species': {{...}}}}")
    species = data.get("species") or {}
    if not isinstance(species, dict):
        raise ConfigError(f"{path}: 'species' must be an object mapping id -> species")
    ids = tuple(str(x) for x in data["individual_ids"])
    return ids, {str(k): str(v) for k, v in species.items()}
