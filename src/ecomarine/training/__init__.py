"""Training on your own catalogue: CSV datasets, samplers, the ArcFace loop, export."""

from .data import (
    AugmentConfig,
    CatalogImages,
    IdentitySampler,
    Sample,
    read_catalog_csv,
    split_by_group_hash,
)
from .loop import (
    TrainConfig,
    TrainResult,
    build_model,
    calibrate_identifier,
    embed_catalog,
    train,
)

__all__ = [
    "AugmentConfig",
    "CatalogImages",
    "IdentitySampler",
    "Sample",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "calibrate_identifier",
    "embed_catalog",
    "read_catalog_csv",
    "split_by_group_hash",
    "train",
]
