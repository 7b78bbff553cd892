"""ecomarine: photo-identification of whales and dolphins.

A photo goes through a *gate* (is this a cetacean photo?), an *identifier* (an embedding
of the animal) and a *gallery* of known individuals (who is it, or is it new?).

The heavy, torch-backed classes are imported lazily, so ``import ecomarine`` and
``ecomarine --version`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    ConfigError,
    DataError,
    EcomarineError,
    GalleryError,
    ImageTooLargeError,
    InvalidImageError,
    UnsafeFileError,
    WeightsNotFoundError,
)
from .io import load_image
from .types import GateResult, Match, Prediction, SightingPrediction

if TYPE_CHECKING:
    from .gallery import Gallery
    from .gate import Gate
    from .heads import ArcMarginProduct
    from .identifier import Identifier
    from .pipeline import Pipeline

__all__ = [
    "ArcMarginProduct",
    "ConfigError",
    "DataError",
    "EcomarineError",
    "Gallery",
    "GalleryError",
    "Gate",
    "GateResult",
    "Identifier",
    "ImageTooLargeError",
    "InvalidImageError",
    "Match",
    "Pipeline",
    "Prediction",
    "SightingPrediction",
    "UnsafeFileError",
    "WeightsNotFoundError",
    "__version__",
    "load_image",
]

_LAZY = {
    "Pipeline": "pipeline",
    "Gate": "gate",
    "Gallery": "gallery",
    "ArcMarginProduct": "heads",
    "Identifier": "identifier",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ecomarine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
