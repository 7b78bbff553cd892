"""Training on your own catalogue: CSV datasets, samplers, the ArcFace loop, export.

Catalogue reading (:mod:`ecomarine.catalog`) and calibration
(:func:`ecomarine.calibration.calibrate_identifier`) belong to the library and are
re-exported here; nothing in the library imports this package.
"""

from ..calibration import calibrate_identifier
from .data import (
    AugmentConfig,
    CatalogImages,
    IdentitySampler,
    Sample,
    cache_view,
    read_catalog_csv,
    split_by_group_hash,
)
from .distill import (
    Teacher,
    class_distillation_loss,
    load_teacher,
    similarity_distillation_loss,
)
from .loop import (
    TrainConfig,
    TrainResult,
    build_model,
    embed_catalog,
    train,
)
from .recalibrate import write_calibration

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
