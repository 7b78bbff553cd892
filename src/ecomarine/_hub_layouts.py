"""Read the published layouts of the field's models as identifier parts.

Three layouts besides ecomarine's own and the legacy EcoMarineAI one:

* **timm** (``config.json`` with ``architecture``; ``model.safetensors`` or
  ``pytorch_model.bin``): MegaDescriptor, DINOv2 and any model timm publishes. The
  checkpoint goes through the architecture's own timm ``checkpoint_filter_fn`` (older
  Swin checkpoints, as MegaDescriptor's, downsample at the end of a stage, timm at the
  start of the next); the network pools as timm does (``forward_head(pre_logits=True)``).
* **MiewID** (a transformers ``config.json`` naming ``MiewIdNet``; ``model.safetensors``):
  a timm backbone, GeM pooling and a BatchNorm neck, read from its tensors; its code is
  never run (no ``trust_remote_code``).
* **open_clip** (``open_clip_config.json``; ``open_clip_model.safetensors`` or
  ``open_clip_pytorch_model.bin``): the image tower alone.

Every checkpoint key is mapped, or reported as dropped (a classifier, a training head, a
text tower), or refused by name. Safetensors are preferred; a ``.bin`` is read with
``torch.load(weights_only=True)`` unless the caller opts in to unpickling. Each part
carries its preprocessing (the model's card where it differs from its config file, see
:mod:`ecomarine.zoo`), its licence and where it came from.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import hub
from ._backbones import build_backbone
from ._checkpoints import DROP, load_torch_state, read_safetensors, remap_keys
from ._parts import IdentifierParts
from .config import IdentifierConfig, PreprocessConfig, read_json
from .errors import ConfigError
from .zoo import card_license, known_model, non_commercial

__all__ = [
    "OPEN_CLIP_CONFIG",
    "config_layout",
    "read_miewid",
    "read_open_clip",
    "read_timm_hub",
]

logger = logging.getLogger(__name__)

OPEN_CLIP_CONFIG = "open_clip_config.json"
_TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_MIEWID_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_CARD = "README.md"
# MiewID's input as its card transforms it: Resize((440, 440)), ImageNet mean/std.
_MIEWID_INPUT = (440, 440)
# open_clip's resize modes and ecomarine's.
_OPEN_CLIP_RESIZE = {"shortest": "crop", "squash": "squash", "longest": "letterbox"}
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# Keys of CLIP's text tower and logit scales: not used by the image tower.
_CLIP_TEXT_PREFIXES = ("transformer.", "token_embedding.", "ln_final.", "text.")
_CLIP_TEXT_KEYS = frozenset(
    {"positional_embedding", "text_projection", "logit_scale", "logit_bias", "attn_mask"}
)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def config_layout(data: Any) -> str | None:
    """Which layout a ``config.json`` describes: ``"ecomarine"``, ``"timm"``, ``"miewid"``."""
    if not isinstance(data, Mapping):
        return None
    if "format_version" in data:
        return "ecomarine"
    if "MiewIdNet" in (data.get("architectures") or ()) or data.get("model_type") == "miewid":
        return "miewid"
    if isinstance(data.get("architecture"), str):
        return "timm"
    return None


# --- timm ---------------------------------------------------------------------------------


def read_timm_hub(
    location: hub.HubLocation, data: Mapping[str, Any], *, allow_pickle: bool = False
) -> IdentifierParts:
    """Read a timm Hub layout (``config.json`` + weights) as a feature identifier.

    Raises:
        ConfigError: An unknown architecture, bad model arguments, or keys that do not
            fit (named).
        UnsafeFileError: A ``.bin`` that needs unpickling, without ``allow_pickle``.
    """
    arch = data["architecture"]
    where = location.describe()
    pretrained_cfg = data.get("pretrained_cfg", data)
    model_args = data.get("model_args") or {}
    if not isinstance(pretrained_cfg, Mapping) or not isinstance(model_args, Mapping):
        raise ConfigError(f"{where}: config.json 'pretrained_cfg'/'model_args' must be objects")
    name, source, license_id, known = _provenance(location)
    preprocess = (
        known.preprocess if known and known.preprocess else _timm_preprocess(pretrained_cfg, where)
    )
    config = IdentifierConfig(
        backbone=arch,
        pooling="backbone",
        neck="none",
        preprocess=preprocess,
        name=name,
        # The classifier is dropped: the identifier reads the pooled features.
        backbone_args={k: v for k, v in model_args.items() if k != "num_classes"},
        license=license_id,
        source=source,
    )
    net = _meta_timm(config, where)
    state, weights = _read_weights(location, _TIMM_WEIGHTS, allow_pickle)
    state = _timm_filter(net, state, f"{weights}")
    expected = set(net.state_dict())
    classifier = str(pretrained_cfg.get("classifier") or "")

    def rename(key: str) -> str:
        # The classifier is dropped; any other key the network lacks is named by the builder.
        if classifier and key.startswith(classifier + ".") and key not in expected:
            return DROP
        return "backbone." + key

    mapped = remap_keys(state, rename, str(weights), "timm ")
    config = config.replace(embedding_size=int(net.num_features))
    return IdentifierParts(config, mapped, where=str(weights))


def _timm_preprocess(cfg: Mapping[str, Any], where: str) -> PreprocessConfig:
    """Timm's evaluation transform from a ``pretrained_cfg``."""
    crop_mode = str(cfg.get("crop_mode") or "center")
    if crop_mode not in ("center", "squash"):
        raise ConfigError(f"{where}: timm crop_mode {crop_mode!r} is not supported")
    return _preprocess(
        f"{where}: unreadable timm pretrained_cfg",
        size=cfg.get("test_input_size") or cfg.get("input_size") or (3, 224, 224),
        mean=cfg.get("mean", (0.485, 0.456, 0.406)),
        std=cfg.get("std", (0.229, 0.224, 0.225)),
        interpolation=cfg.get("interpolation"),
        resize="crop" if crop_mode == "center" else "squash",
        crop_pct=cfg.get("test_crop_pct") or cfg.get("crop_pct") or 0.875,
    )


def _preprocess(
    unreadable: str,
    *,
    size: Any,
    mean: Any,
    std: Any,
    interpolation: Any,
    resize: str,
    crop_pct: Any = 1.0,
) -> PreprocessConfig:
    """A preprocessing config from a published config's values, every conversion checked.

    ``size`` is an int or ``[..., height, width]``; interpolations ecomarine lacks read as
    bicubic.
    """
    try:
        height, width = (size, size) if isinstance(size, int) else (size[-2], size[-1])
        name = str(interpolation or "bicubic")
        return PreprocessConfig(
            input_size=(int(height), int(width)),
            mean=tuple(float(v) for v in mean),  # type: ignore[arg-type]
            std=tuple(float(v) for v in std),  # type: ignore[arg-type]
            interpolation=name if name in ("bilinear", "nearest") else "bicubic",
            resize=resize,
            crop_pct=float(crop_pct),
        )
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise ConfigError(f"{unreadable} ({exc})") from exc


def _meta_timm(config: IdentifierConfig, where: str) -> Any:
    """The timm network of a config, on the meta device (shapes only, no memory)."""
    try:
        with torch.device("meta"):
            return build_backbone(config, where=f"{where}: ", noun="architecture")
    except RuntimeError as exc:  # an operation the meta device cannot run on these arguments
        raise ConfigError(f"{where}: timm cannot build {config.backbone!r} ({exc})") from exc


def _timm_filter(net: Any, state: dict[str, Tensor], where: str) -> dict[str, Tensor]:
    """Apply the architecture's own timm checkpoint conversion, when it has one."""
    module = sys.modules.get(type(net).__module__)
    fn: Callable[..., Any] | None = getattr(module, "checkpoint_filter_fn", None)
    if fn is None:
        return state
    try:
        out = fn(state, net)
    except Exception as exc:  # a filter meeting tensors it does not expect raises anything
        raise ConfigError(f"{where}: timm cannot convert this checkpoint ({exc})") from exc
    if not isinstance(out, Mapping) or not all(isinstance(v, Tensor) for v in out.values()):
        raise ConfigError(f"{where}: timm's conversion did not give a state dict")
    return dict(out)


# --- MiewID -------------------------------------------------------------------------------


def read_miewid(
    location: hub.HubLocation, data: Mapping[str, Any], *, allow_pickle: bool = False
) -> IdentifierParts:
    """Read a MiewID repository (transformers config + weights) without running its code.

    MiewIdNet is a timm backbone (``model_name``), GeM pooling (``pooling.p``) and a
    BatchNorm neck (``bn.*``) whose output is the embedding; ``final.*`` (the training
    head over its own training individuals) is dropped.

    Raises:
        ConfigError: A missing ``model_name``, an unsupported variant (``use_fc``, a ViT
            or SwinV2 backbone), or keys that do not fit (named).
    """
    where = location.describe()
    model_name = data.get("model_name")
    if not isinstance(model_name, str):
        raise ConfigError(f"{where}: MiewID config.json has no 'model_name'")
    if data.get("use_fc"):
        raise ConfigError(f"{where}: MiewID with use_fc=true is not supported")
    name, source, license_id, known = _provenance(location)
    config = IdentifierConfig(
        backbone=model_name,
        pooling="gem",
        neck="batchnorm",
        preprocess=(
            known.preprocess
            if known and known.preprocess
            else PreprocessConfig(input_size=_MIEWID_INPUT)
        ),
        name=name,
        license=license_id,
        source=source,
    )
    net = _meta_timm(config, where)
    if hasattr(net, "cls_token") or model_name.startswith("swinv2"):
        raise ConfigError(f"{where}: MiewID with a {model_name} backbone is not supported")
    state, weights = _read_weights(location, _MIEWID_WEIGHTS, allow_pickle)

    def rename(key: str) -> str | None:
        if key.startswith("backbone."):
            return key
        if key == "pooling.p":
            return "pool.p"
        if key.startswith("bn."):
            return "neck." + key[len("bn.") :]
        return DROP if key.startswith("final.") else None  # final: the training head

    mapped = remap_keys(state, rename, str(weights), "MiewID ")
    config = config.replace(embedding_size=int(net.num_features))
    return IdentifierParts(config, mapped, where=str(weights))


# --- open_clip ----------------------------------------------------------------------------


def read_open_clip(location: hub.HubLocation, *, allow_pickle: bool = False) -> IdentifierParts:
    """Read an open_clip Hub layout's image tower as a feature identifier.

    Raises:
        ConfigError: A config without ``model_cfg.vision_cfg``, or keys that are neither
            the image tower's nor the text tower's (named).
    """
    where = location.describe()
    raw = read_json(hub.require_file(location, OPEN_CLIP_CONFIG))
    model_cfg = raw.get("model_cfg") if isinstance(raw, Mapping) else None
    if not isinstance(model_cfg, Mapping) or not isinstance(model_cfg.get("vision_cfg"), Mapping):
        raise ConfigError(f"{where}: {OPEN_CLIP_CONFIG} has no model_cfg.vision_cfg")
    pcfg = raw.get("preprocess_cfg") or {}
    if not isinstance(pcfg, Mapping):
        raise ConfigError(f"{where}: {OPEN_CLIP_CONFIG} 'preprocess_cfg' must be an object")
    name, source, license_id, known = _provenance(location)
    args = {
        "embed_dim": model_cfg.get("embed_dim"),
        "vision_cfg": dict(model_cfg["vision_cfg"]),
        "quick_gelu": bool(model_cfg.get("quick_gelu", False)),
    }
    preprocess = (
        known.preprocess if known and known.preprocess else _clip_preprocess(args, pcfg, where)
    )
    embed_dim = args["embed_dim"]
    if not isinstance(embed_dim, int):
        raise ConfigError(f"{where}: {OPEN_CLIP_CONFIG} model_cfg.embed_dim must be an integer")
    config = IdentifierConfig(
        backbone="open_clip_tower",
        family="open_clip",
        pooling="backbone",
        neck="none",
        embedding_size=embed_dim,
        preprocess=preprocess,
        name=name,
        backbone_args=args,
        license=license_id,
        source=source,
    )
    state, weights = _read_weights(location, _OPEN_CLIP_WEIGHTS, allow_pickle)

    def rename(key: str) -> str | None:
        if key.startswith("visual."):
            return "backbone.tower." + key[len("visual.") :]
        return DROP if key.startswith(_CLIP_TEXT_PREFIXES) or key in _CLIP_TEXT_KEYS else None

    mapped = remap_keys(state, rename, str(weights), "open_clip ")
    return IdentifierParts(config, mapped, where=str(weights))


def _clip_preprocess(
    args: Mapping[str, Any], pcfg: Mapping[str, Any], where: str
) -> PreprocessConfig:
    mode = str(pcfg.get("resize_mode") or "shortest")
    if mode not in _OPEN_CLIP_RESIZE:
        raise ConfigError(f"{where}: open_clip resize_mode {mode!r} is not supported")
    return _preprocess(
        f"{where}: unreadable open_clip preprocess_cfg",
        size=args["vision_cfg"].get("image_size", 224),
        mean=pcfg.get("mean", _OPENAI_MEAN),
        std=pcfg.get("std", _OPENAI_STD),
        interpolation=pcfg.get("interpolation"),
        resize=_OPEN_CLIP_RESIZE[mode],
    )


# --- shared -------------------------------------------------------------------------------


def _provenance(location: hub.HubLocation) -> tuple[str, str, str | None, Any]:
    """``(name, source, licence, registry entry)`` of a location."""
    source = location.describe()
    known = known_model(location.repo_id) if location.repo_id else None
    card = hub.fetch_file(location, _CARD, required=False)
    license_id = card_license(card) if card is not None else None
    if license_id is None and known is not None and not known.license.startswith("see "):
        license_id = known.license
    if location.repo_id is not None:
        name = location.repo_id.split("/", 1)[1]
    else:
        name = Path(str(location.local_dir)).resolve().name or "model"
    name = _SAFE_NAME.sub("-", name)[:100]
    if non_commercial(license_id):
        logger.info("%s: weights licensed %s (non-commercial use only)", source, license_id)
    return name, source, license_id, known


def _read_weights(
    location: hub.HubLocation, names: tuple[str, str], allow_pickle: bool
) -> tuple[dict[str, Tensor], Path]:
    """The state dict of the first weights file present: safetensors, else torch."""
    safe, pickled = names
    path = hub.fetch_file(location, safe, required=False)
    if path is not None:
        return read_safetensors(path), path
    path = hub.require_file(location, pickled)
    return load_torch_state(path, allow_pickle), path
