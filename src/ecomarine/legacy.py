"""Read the EcoMarineAI production checkpoint layout as identifier parts.

Layout (a folder or a Hub repository):

* ``efficientnet_b4_512_fold0.ckpt``: a torch checkpoint (optionally Lightning-style,
  under ``state_dict``) with ``model.*`` = timm ``efficientnet_b4`` features,
  ``embedding.{weight,bias}`` = Linear 1792 -> 512, ``arc.weight`` = the ArcFace
  centres, and optionally ``pooling.p`` (GeM);
* ``encoder_classes.npy``: head row -> individual id;
* ``species_map.csv`` (optional): columns ``individual_id,species``.

Every checkpoint key is mapped, or reported (a dropped ImageNet classifier), or refused.
``torch.load`` runs with ``weights_only=True`` and ``np.load`` with
``allow_pickle=False`` unless the caller passes ``allow_pickle=True``. The result is plain
data (:class:`~ecomarine._parts.IdentifierParts`): the builder checks every tensor against
the architecture.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from torch import Tensor

from . import hub
from ._checkpoints import DROP, PICKLE_HINT, load_torch_state, remap_keys
from ._parts import IdentifierParts
from .config import HeadConfig, IdentifierConfig, PreprocessConfig
from .errors import ConfigError, DataError, UnsafeFileError, WeightsNotFoundError

__all__ = [
    "CHECKPOINT_NAME",
    "CLASSES_NAME",
    "SPECIES_NAME",
    "convert_legacy",
    "read_legacy",
]

CHECKPOINT_NAME = "efficientnet_b4_512_fold0.ckpt"
CLASSES_NAME = "encoder_classes.npy"
SPECIES_NAME = "species_map.csv"
LEGACY_BACKBONE = "efficientnet_b4"
LEGACY_INPUT = (512, 512)
# Keys of the backbone's own ImageNet classifier: unused by the embedding, dropped.
_DROPPED_PREFIXES = ("model.classifier.",)


def read_legacy(location: hub.HubLocation, *, allow_pickle: bool = False) -> IdentifierParts:
    """Read the legacy files from ``location`` and convert them.

    Raises:
        WeightsNotFoundError: When neither format is present.
        UnsafeFileError: When a file needs unpickling and ``allow_pickle`` is False.
        ConfigError: When a key cannot be mapped.
    """
    ckpt = hub.fetch_file(location, CHECKPOINT_NAME, required=False)
    if ckpt is None:
        offline = (
            ' in the local Hugging Face cache (offline mode); use "embedded" or download '
            "the repository once while online"
            if location.repo_id is not None and location.local_files_only
            else ""
        )
        raise WeightsNotFoundError(
            f"{location.describe()}: no config.json (ecomarine format) and no "
            f"{CHECKPOINT_NAME} (EcoMarineAI format){offline}"
        )
    classes = hub.require_file(location, CLASSES_NAME)
    species_path = hub.fetch_file(location, SPECIES_NAME, required=False)
    state = load_torch_state(ckpt, allow_pickle)
    labels = _load_classes(classes, allow_pickle)
    species = _load_species(species_path) if species_path is not None else {}
    return convert_legacy(state, labels, species, where=str(ckpt))


def _load_classes(path: Path, allow_pickle: bool) -> list[str]:
    try:
        arr = np.load(path, allow_pickle=allow_pickle)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise UnsafeFileError(
                f"{path}: an object array needs unpickling; {PICKLE_HINT}"
            ) from exc
        raise ConfigError(f"{path}: unreadable .npy file ({exc})") from exc
    except (OSError, EOFError) as exc:
        raise ConfigError(f"{path}: unreadable .npy file ({exc})") from exc
    if not isinstance(arr, np.ndarray) or arr.ndim != 1:
        raise ConfigError(f"{path}: expected a 1-D array of individual ids")
    return [str(x) for x in arr.tolist()]


def _load_species(path: Path) -> dict[str, str]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            if "individual_id" not in fields or "species" not in fields:
                raise DataError(f"{path}: expected columns individual_id,species; found {fields}")
            return {row["individual_id"]: row["species"] for row in reader}
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from exc


def convert_legacy(
    state: Mapping[str, Tensor],
    labels: list[str],
    species: Mapping[str, str] | None = None,
    *,
    where: str = "checkpoint",
    backbone: str = LEGACY_BACKBONE,
) -> IdentifierParts:
    """Map a legacy state dict onto the identifier's key names and config.

    Args:
        state: The checkpoint's state dict.
        labels: Individual id per ``arc.weight`` row.
        species: Species per individual id.
        where: The file name, for messages.
        backbone: timm name of the backbone (``efficientnet_b4`` in production).

    Raises:
        ConfigError: Unknown keys (named), missing legacy tensors, or a label count that
            does not match the head. (Backbone tensors that do not fit are named by the
            builder.)
    """
    for required in ("embedding.weight", "embedding.bias", "arc.weight"):
        if required not in state:
            raise ConfigError(f"{where}: missing legacy tensor {required!r}")

    def rename(key: str) -> str | None:
        if key.startswith(_DROPPED_PREFIXES):
            return DROP
        if key.startswith("model."):
            return "backbone." + key[len("model.") :]
        if key in ("embedding.weight", "embedding.bias"):
            return "neck." + key.split(".", 1)[1]
        return {"arc.weight": "head.weight", "pooling.p": "pool.p"}.get(key)

    mapped = remap_keys(state, rename, where)
    if "pool.p" in mapped:
        mapped["pool.p"] = mapped["pool.p"].reshape(1)
    arc = state["arc.weight"]
    if arc.shape[0] != len(labels):
        raise ConfigError(
            f"{where}: arc.weight has {arc.shape[0]} rows but {CLASSES_NAME} lists "
            f"{len(labels)} individual ids"
        )
    emb = state["embedding.weight"]
    config = IdentifierConfig(
        backbone=backbone,
        pooling="gem" if "pooling.p" in state else "avg",
        neck="linear",
        embedding_size=int(emb.shape[0]),
        head=HeadConfig(type="arcface", s=30.0, m=0.5),
        preprocess=PreprocessConfig(input_size=LEGACY_INPUT),
        backbone_num_classes=0,
        name=f"ecomarineai-{backbone}",
    )
    return IdentifierParts(config, mapped, tuple(labels), dict(species or {}), where)
