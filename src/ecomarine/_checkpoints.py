"""Weights files: read without running code, and their keys renamed.

One owner for reading safetensors and torch checkpoints and for accounting for every
checkpoint key, shared by the loading factory and every layout converter.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors_bytes
from torch import Tensor

from ._files import read_regular
from .errors import ConfigError, UnsafeFileError

__all__ = [
    "DROP",
    "MAX_WEIGHTS_BYTES",
    "PICKLE_HINT",
    "load_torch_state",
    "read_safetensors",
    "remap_keys",
]

logger = logging.getLogger(__name__)

#: What a key-renaming rule returns for a tensor that is dropped (see :func:`remap_keys`).
DROP = ""
# Keys named in a message, at most.
_NAMED = 10

#: Largest weights file read (the largest published re-identification models are ~1 GB).
MAX_WEIGHTS_BYTES = 16 * 1024**3
PICKLE_HINT = (
    "pass allow_pickle=True only if you trust this file: unpickling can execute arbitrary code"
)


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file (never unpickles).

    Only a regular file of at most :data:`MAX_WEIGHTS_BYTES` is read.

    Raises:
        ConfigError: A missing, special, oversized, unreadable or malformed file.
    """
    data = read_regular(
        path, lambda why: ConfigError(f"{path}: {why}"), max_bytes=MAX_WEIGHTS_BYTES
    )
    try:
        return dict(load_safetensors_bytes(data))
    except Exception as exc:  # safetensors raises its own error types on bad headers
        raise ConfigError(f"{path}: unreadable safetensors file ({exc})") from exc


def load_torch_state(path: Path, allow_pickle: bool) -> dict[str, Tensor]:
    """The state dict of a torch checkpoint (unwrapped from ``state_dict`` or ``model``).

    ``torch.load`` runs with ``weights_only=True`` (tensors and plain containers only)
    unless ``allow_pickle``.

    Raises:
        UnsafeFileError: The file holds other Python objects and ``allow_pickle`` is False.
        ConfigError: Not a readable checkpoint, or entries that are not tensors.
    """
    try:
        raw = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        raise UnsafeFileError(
            f"{path}: the checkpoint holds pickled Python objects beyond tensors; {PICKLE_HINT}"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable torch checkpoint ({exc})") from exc
    state = raw
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise ConfigError(f"{path}: expected a state dict (or {{'state_dict': ...}})")
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ConfigError(f"{path}: non-tensor entries in the state dict: {bad[:10]}")
    return dict(state)


def remap_keys(
    state: Mapping[str, Tensor], rename: Callable[[str], str | None], where: str, what: str = ""
) -> dict[str, Tensor]:
    """Tensors under the identifier's key names: every checkpoint key accounted for.

    ``rename`` gives each key its new name, :data:`DROP` for a tensor the vectors do not
    use (logged), or ``None`` for a key it does not know (refused, named).

    Raises:
        ConfigError: Keys ``rename`` does not know (``what`` says whose checkpoint).
    """
    mapped: dict[str, Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    for key, tensor in state.items():
        new = rename(key)
        if new is None:
            unknown.append(key)
        elif new == DROP:
            dropped.append(key)
        else:
            mapped[new] = tensor
    if unknown:
        more = f" (+{len(unknown) - _NAMED} more)" if len(unknown) > _NAMED else ""
        raise ConfigError(
            f"{where}: unknown {what}checkpoint key(s) {sorted(unknown)[:_NAMED]}{more}"
        )
    if dropped:
        logger.info(
            "%s: dropped %d unused tensors %s", where, len(dropped), sorted(dropped)[:_NAMED]
        )
    return mapped
