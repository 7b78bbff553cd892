"""Training on your own catalogue: CSV datasets, samplers, the ArcFace loop, export.

Catalogue reading (:mod:`ecomarine.catalog`) and calibration
(:func:`ecomarine.calibration.calibrate_identifier`) belong to the library and are
re-exported here; nothing in the library imports this package. Names are loaded lazily,
so ``ecomarine.training.config`` (what the CLI needs for its options) imports no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..calibration import calibrate_identifier
    from ..catalog import Sample, read_catalog_csv, split_by_group_hash
    from .config import AugmentConfig, TrainConfig
    from .data import CatalogImages, IdentitySampler, cache_view
    from .distill import (
        Teacher,
        class_distillation_loss,
        load_teacher,
        similarity_distillation_loss,
    )
    from .loop import TrainResult, build_model, embed_catalog, train
    from .recalibrate import write_calibration

_LAZY = {
    "AugmentConfig": ".config",
    "CatalogImages": ".data",
    "IdentitySampler": ".data",
    "Sample": "..catalog",
    "Teacher": ".distill",
    "TrainConfig": ".config",
    "TrainResult": ".loop",
    "build_model": ".loop",
    "cache_view": ".data",
    "calibrate_identifier": "..calibration",
    "class_distillation_loss": ".distill",
    "embed_catalog": ".loop",
    "load_teacher": ".distill",
    "read_catalog_csv": "..catalog",
    "similarity_distillation_loss": ".distill",
    "split_by_group_hash": "..catalog",
    "train": ".loop",
    "write_calibration": ".recalibrate",
}

__all__ = [
    "AugmentConfig",
    "CatalogImages",
    "IdentitySampler",
    "Sample",
    "Teacher",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "cache_view",
    "calibrate_identifier",
    "class_distillation_loss",
    "embed_catalog",
    "load_teacher",
    "read_catalog_csv",
    "similarity_distillation_loss",
    "split_by_group_hash",
    "train",
    "write_calibration",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ecomarine.training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
