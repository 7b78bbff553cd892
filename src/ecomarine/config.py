"""Typed configuration of an :class:`~ecomarine.identifier.Identifier`.

The config travels with the weights (``config.json``): architecture, preprocessing,
head, and the open-set thresholds (one per embedding kind; the model owns them, and
galleries built with it follow them unless they store an explicit override). Unknown keys
and wrong types are refused with :class:`~ecomarine.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ._files import MiB, read_regular
from ._text import parse_json
from .errors import ConfigError, GalleryError
from .search import check_set_aggregation
from .types import EMBEDDING_KINDS, EmbeddingKind, embedding_kind
from .uncertainty import UncertaintyCalibration

__all__ = [
    "FORMAT_VERSION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "HeadConfig",
    "IdentifierConfig",
    "PreprocessConfig",
    "read_json",
]

#: Version of the on-disk weight format written by ``save_pretrained``. Version 2 holds the
#: open-set thresholds in one per-kind mapping; version 1 files (two separate keys) load.
FORMAT_VERSION: Final = 2
_READABLE_VERSIONS: Final = (1, 2)
# Version-1 threshold keys and the kind each one holds.
_V1_THRESHOLD_KEYS: Final[dict[str, EmbeddingKind]] = {
    "new_individual_threshold": "embedding",
    "feature_new_individual_threshold": "features",
}
IMAGENET_MEAN: Final = (0.485, 0.456, 0.406)
IMAGENET_STD: Final = (0.229, 0.224, 0.225)

#: Bounds on what a config may ask for, so that an untrusted ``config.json`` cannot make
#: ecomarine allocate without limit before the weights are checked against it.
MAX_INPUT_SIDE: Final = 2048
MAX_EMBEDDING_SIZE: Final = 65536
MAX_MEMBERS: Final = 64
MAX_SUBCENTRES: Final = 64
MAX_CLASSES: Final = 100_000
# A timm model name: no paths, no "hf-hub:" or "local-dir:" prefixes (which would reach
# the network or the file system from a config file).
_TIMM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]{0,127}$")

_POOLINGS = ("gem", "gem2", "avg", "backbone")
_NECKS = ("bn", "linear", "batchnorm", "none")
_HEADS = ("arcface", "subcenter")
_RESIZES = ("squash", "letterbox", "crop")
#: Where a backbone's code comes from: timm, or open_clip's image tower.
FAMILIES: Final = ("timm", "open_clip")
# Arguments a config may not pass to the network's constructor: they reach files or the
# network (pretrained weights, caches) or are set by the identifier itself.
_FORBIDDEN_BACKBONE_ARGS: Final = frozenset(
    {
        "pretrained",
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "checkpoint_path",
        "cache_dir",
        "features_only",
        "num_classes",
        "scriptable",
        "exportable",
        "no_jit",
    }
)
_MAX_ARG_ITEMS: Final = 256
_ARG_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def _fail(where: str, message: str) -> ConfigError:
    return ConfigError(f"{where}: {message}")


def _get(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = data[key]
    # bool is an int subclass; refuse it where a number is expected.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise _fail(where, f"'{key}' must be {kind}, got bool")
    if not isinstance(value, kind):
        raise _fail(where, f"'{key}' must be {kind}, got {type(value).__name__}")
    return value


def _check_unknown(cls: type[Any], data: Mapping[str, Any], where: str) -> None:
    if not isinstance(data, Mapping):
        raise _fail(where, f"expected an object, got {type(data).__name__}")
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise _fail(where, f"unknown key(s) {unknown}")


@dataclass(frozen=True)
class PreprocessConfig:
    """How images are turned into network input; saved with the weights.

    Attributes:
        input_size: ``(height, width)``; need not be square.
        mean: Per-channel mean (RGB, in [0, 1]).
        std: Per-channel standard deviation.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"``.
        resize: ``"squash"`` (resize to exactly ``input_size``), ``"letterbox"``
            (keep the aspect ratio and pad with the mean colour) or ``"crop"`` (timm's and
            open_clip's evaluation transform: resize the shorter side, keeping the aspect
            ratio, to cover ``input_size / crop_pct``, then crop the centre).
        crop_pct: Share of the resized image the centre crop keeps (``"squash"`` and
            ``"crop"``; 1.0: none is cut away beyond the aspect ratio). A ``"squash"`` with
            ``crop_pct < 1`` is timm's ``crop_mode="squash"``.
    """

    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    resize: str = "squash"
    crop_pct: float = 1.0

    def __post_init__(self) -> None:
        where = "preprocess"
        if len(self.input_size) != 2 or any(
            not isinstance(v, int) or isinstance(v, bool) or not 8 <= v <= MAX_INPUT_SIDE
            for v in self.input_size
        ):
            raise _fail(
                where,
                f"input_size must be two ints in [8, {MAX_INPUT_SIDE}], got {self.input_size!r}",
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if (
                len(values) != 3
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
                or not all(math.isfinite(v) for v in values)
            ):
                raise _fail(where, f"{name} must be three finite numbers, got {values!r}")
        if any(v <= 0 for v in self.std):
            raise _fail(where, "std must be positive")
        if self.interpolation not in _INTERPOLATIONS:
            raise _fail(where, f"interpolation must be one of {_INTERPOLATIONS}")
        if self.resize not in _RESIZES:
            raise _fail(where, f"resize must be one of {_RESIZES}")
        if (
            isinstance(self.crop_pct, bool)
            or not isinstance(self.crop_pct, int | float)
            or not (math.isfinite(self.crop_pct) and 0.1 <= self.crop_pct <= 1.0)
        ):
            raise _fail(where, f"crop_pct must be a number in [0.1, 1], got {self.crop_pct!r}")
        if self.resize == "letterbox" and self.crop_pct != 1.0:
            raise _fail(where, "crop_pct must be 1 with resize='letterbox'")

    def scaled_size(self) -> tuple[int, int]:
        """``(height, width)`` the photo is resized to before the centre crop."""
        return (
            math.floor(self.height / self.crop_pct),
            math.floor(self.width / self.crop_pct),
        )

    @property
    def height(self) -> int:
        """Input height in pixels."""
        return self.input_size[0]

    @property
    def width(self) -> int:
        """Input width in pixels."""
        return self.input_size[1]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize": self.resize,
            # Written only when cropping, so that earlier files and fingerprints are unchanged.
            **({"crop_pct": self.crop_pct} if self.crop_pct != 1.0 else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        """Validate and build from a dict."""
        where = "preprocess"
        _check_unknown(cls, data, where)
        kwargs: dict[str, Any] = {}
        for key in ("input_size", "mean", "std"):
            if key in data:
                kwargs[key] = tuple(_get(data, key, (list, tuple), where))
        for key in ("interpolation", "resize"):
            if key in data:
                kwargs[key] = _get(data, key, str, where)
        if "crop_pct" in data:
            kwargs["crop_pct"] = float(_get(data, "crop_pct", (int, float), where))
        return cls(**kwargs)


@dataclass(frozen=True)
class HeadConfig:
    """The ArcFace head over known individuals.

    Attributes:
        type: ``"arcface"`` or ``"subcenter"``.
        s: Logit scale.
        m: Angular margin in radians.
        easy_margin: See :func:`ecomarine.heads.arcface_logits`.
        ls_eps: Label smoothing.
        k: Sub-centres per class (``"subcenter"`` only).
    """

    type: str = "arcface"
    s: float = 30.0
    m: float = 0.5
    easy_margin: bool = False
    ls_eps: float = 0.0
    k: int = 3

    def __post_init__(self) -> None:
        if self.type not in _HEADS:
            raise _fail("head", f"type must be one of {_HEADS}, got {self.type!r}")
        if not 1 <= self.k <= MAX_SUBCENTRES:
            raise _fail("head", f"k must be in [1, {MAX_SUBCENTRES}], got {self.k}")
        for key, lo, hi in (("s", 0.0, 1000.0), ("m", 0.0, math.pi / 2), ("ls_eps", 0.0, 1.0)):
            value = getattr(self, key)
            if not (math.isfinite(value) and lo <= value <= hi):
                raise _fail("head", f"{key} must be a finite number in [{lo}, {hi:.4g}]")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadConfig:
        """Validate and build from a dict."""
        _check_unknown(cls, data, "head")
        kwargs: dict[str, Any] = {}
        types: dict[str, type | tuple[type, ...]] = {
            "type": str,
            "s": (int, float),
            "m": (int, float),
            "easy_margin": bool,
            "ls_eps": (int, float),
            "k": int,
        }
        for key, kind in types.items():
            if key in data:
                kwargs[key] = _get(data, key, kind, "head")
        return cls(**kwargs)


@dataclass(frozen=True)
class IdentifierConfig:
    """Architecture, preprocessing and thresholds of an identifier.

    Attributes:
        backbone: Any timm model name (for ``family="open_clip"``: the open_clip model
            name, for messages only; ``backbone_args`` defines the tower).
        pooling: ``"gem"`` (learnable generalised mean), ``"gem2"`` (GeM over the final
            feature map and over the last stage a stride before it, concatenated: finer
            markings at twice the resolution; timm backbones with ``forward_intermediates``),
            ``"avg"``, or ``"backbone"`` (the
            network's own pooling: timm's ``forward_head(pre_logits=True)``, e.g. a ViT's
            class token or a Swin's average; an open_clip tower's projected output).
        neck: ``"bn"`` (Linear + BatchNorm1d), ``"linear"``, ``"batchnorm"`` (BatchNorm1d
            alone, MiewID's) or ``"none"``.
        embedding_size: Output size of the neck (ignored when ``neck == "none"``).
        head: The ArcFace head, or ``None`` for an embedding-only model.
        preprocess: Input size, normalisation and resize policy.
        backbone_num_classes: Classes of the backbone's own classifier (1000 keeps an
            ImageNet head, used by the embedded gate); 0 drops it.
        new_individual_thresholds: Open-set threshold on cosine similarity per embedding
            kind (``"embedding"``, ``"features"``), calibrated on held-out data; a kind
            without one has no open-set decision.
        name: A short model name for cards and predictions.
        sighting_aggregation: How a sighting's photos combine into one score per
            individual (see :data:`~ecomarine.search.SET_AGGREGATIONS`), chosen on
            held-out data with :attr:`sighting_thresholds`; ``None``: not calibrated.
        sighting_thresholds: Open-set threshold on the aggregated sighting score per
            embedding kind (aggregated scores are not distributed like photo scores).
        uncertainty: Calibrated probabilities and conformal sets for the trained
            embedding (:class:`~ecomarine.uncertainty.UncertaintyCalibration`); ``None``:
            predictions fall back to the threshold alone.
        sighting_uncertainty: The same for sightings, calibrated with
            :attr:`sighting_aggregation` (valid for that aggregation only).
        members: Number of member networks (an ensemble when > 1). Each member is a
            backbone -> pooling -> neck of this architecture; the identifier's vectors
            concatenate the members' unit-norm vectors (see
            :func:`ecomarine.ensemble.ensemble_identifiers`).
        family: Where the backbone's code comes from: ``"timm"`` or ``"open_clip"`` (an
            open_clip image tower, needs the ``clip`` extra).
        backbone_args: Arguments the backbone is built with (timm's ``model_args``, e.g.
            widths of a variant; for open_clip ``embed_dim``, ``vision_cfg`` and
            ``quick_gelu``). Plain JSON values; arguments that reach files or the network
            are refused.
        license: Licence of the weights (an SPDX-like id, e.g. ``"cc-by-nc-4.0"``), as
            their publisher states it; printed at load, written into model cards and
            Darwin Core metadata.
        source: Where the weights were imported from (e.g.
            ``"hf-hub:BVRA/MegaDescriptor-T-224"``).
        test_time_flip: Average each photo's vectors with those of its mirror image
            (horizontal flip) before normalising: flip test-time augmentation. Twice the
            identifier's cost; changes the vectors (galleries are re-embedded), so the
            thresholds must be calibrated with it on.
    """

    backbone: str = "tf_efficientnet_lite0"
    pooling: str = "gem"
    neck: str = "bn"
    embedding_size: int = 512
    head: HeadConfig | None = None
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    backbone_num_classes: int = 0
    new_individual_thresholds: Mapping[EmbeddingKind, float] = field(default_factory=dict)
    name: str = "custom"
    members: int = 1
    sighting_aggregation: str | None = None
    sighting_thresholds: Mapping[EmbeddingKind, float] = field(default_factory=dict)
    uncertainty: UncertaintyCalibration | None = None
    sighting_uncertainty: UncertaintyCalibration | None = None
    family: str = "timm"
    backbone_args: Mapping[str, Any] = field(default_factory=dict)
    license: str | None = None
    source: str | None = None
    test_time_flip: bool = False

    def __post_init__(self) -> None:
        where = "config"
        if self.family not in FAMILIES:
            raise _fail(where, f"family must be one of {FAMILIES}, got {self.family!r}")
        object.__setattr__(self, "backbone_args", _checked_args(self.backbone_args, where))
        for key in ("license", "source"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 300):
                raise _fail(where, f"{key} must be a short string or null")
        if self.sighting_aggregation is not None:
            try:
                check_set_aggregation(self.sighting_aggregation)
            except GalleryError as exc:
                raise _fail(where, str(exc)) from exc
        object.__setattr__(
            self, "sighting_thresholds", _checked_thresholds(self.sighting_thresholds, where)
        )
        if not 1 <= self.members <= MAX_MEMBERS:
            raise _fail(where, f"members must be in [1, {MAX_MEMBERS}], got {self.members}")
        if not _TIMM_NAME.match(self.backbone):
            raise _fail(
                where,
                f"backbone must be a plain timm model name (letters, digits, '_', '.'), "
                f"got {self.backbone[:80]!r}",
            )
        if self.pooling not in _POOLINGS:
            raise _fail(where, f"pooling must be one of {_POOLINGS}, got {self.pooling!r}")
        if self.neck not in _NECKS:
            raise _fail(where, f"neck must be one of {_NECKS}, got {self.neck!r}")
        if not 1 <= self.embedding_size <= MAX_EMBEDDING_SIZE:
            raise _fail(where, f"embedding_size must be in [1, {MAX_EMBEDDING_SIZE}]")
        if not 0 <= self.backbone_num_classes <= MAX_CLASSES:
            raise _fail(where, f"backbone_num_classes must be in [0, {MAX_CLASSES}]")
        object.__setattr__(
            self,
            "new_individual_thresholds",
            _checked_thresholds(self.new_individual_thresholds, where),
        )

    def threshold_for(self, kind: EmbeddingKind) -> float | None:
        """The calibrated open-set threshold of one embedding kind, if any."""
        return self.new_individual_thresholds.get(kind)

    def sighting_threshold_for(self, kind: EmbeddingKind) -> float | None:
        """The calibrated sighting threshold of one embedding kind, if any."""
        return self.sighting_thresholds.get(kind)

    def with_thresholds(self, thresholds: Mapping[EmbeddingKind, float | None]) -> IdentifierConfig:
        """A copy with some kinds' thresholds set (a ``None`` value removes that kind's)."""
        merged = dict(self.new_individual_thresholds)
        for kind, value in thresholds.items():
            if value is None:
                merged.pop(kind, None)
            else:
                merged[kind] = value
        return self.replace(new_individual_thresholds=merged)

    def architecture_dict(self) -> dict[str, Any]:
        """What makes the vectors: architecture and preprocessing, no thresholds or names.

        Gallery fingerprints hash it. Its layout is that of format 1 without thresholds,
        name and head, so fingerprints (and galleries) of earlier files stay valid.
        """
        out: dict[str, Any] = {
            "format_version": 1,
            "backbone": self.backbone,
            "pooling": self.pooling,
            "neck": self.neck,
            "embedding_size": self.embedding_size,
            "preprocess": self.preprocess.to_dict(),
            "backbone_num_classes": self.backbone_num_classes,
        }
        if self.members != 1:
            out["members"] = self.members
        out.update(self._backbone_fields())
        return out

    def _backbone_fields(self) -> dict[str, Any]:
        """``family``, ``backbone_args`` and ``test_time_flip``, only when not the defaults.

        So that earlier files and gallery fingerprints stay as they were.
        """
        out: dict[str, Any] = {}
        if self.family != "timm":
            out["family"] = self.family
        if self.backbone_args:
            out["backbone_args"] = dict(self.backbone_args)
        if self.test_time_flip:
            out["test_time_flip"] = True
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return the ``config.json`` content (with the format version)."""
        out: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "backbone": self.backbone,
            "pooling": self.pooling,
            "neck": self.neck,
            "embedding_size": self.embedding_size,
            "head": None if self.head is None else self.head.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "backbone_num_classes": self.backbone_num_classes,
            "new_individual_thresholds": dict(self.new_individual_thresholds),
            "name": self.name,
        }
        # Written only for ensembles, as in format 1.
        if self.members != 1:
            out["members"] = self.members
        # Written only once calibrated, so older readers keep reading other models.
        if self.sighting_aggregation is not None:
            out["sighting_aggregation"] = self.sighting_aggregation
        if self.sighting_thresholds:
            out["sighting_thresholds"] = dict(self.sighting_thresholds)
        if self.uncertainty is not None:
            out["uncertainty"] = self.uncertainty.to_dict()
        if self.sighting_uncertainty is not None:
            out["sighting_uncertainty"] = self.sighting_uncertainty.to_dict()
        out.update(self._backbone_fields())
        for key in ("license", "source"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "config.json") -> IdentifierConfig:
        """Validate and build from ``config.json`` content.

        Raises:
            ConfigError: Unknown or missing keys, wrong types, or an unsupported version.
        """
        if not isinstance(data, Mapping):
            raise _fail(where, f"expected a JSON object, got {type(data).__name__}")
        body = dict(data)
        version = body.pop("format_version", None)
        if version not in _READABLE_VERSIONS:
            raise _fail(
                where,
                f"unsupported format_version {version!r} (this ecomarine reads "
                f"{', '.join(map(str, _READABLE_VERSIONS))}); upgrade ecomarine or re-export "
                "the model",
            )
        thresholds: dict[str, Any] = {}
        if version == 1:
            if "new_individual_thresholds" in body:
                raise _fail(where, "unknown key(s) ['new_individual_thresholds'] in format 1")
            for key, threshold_kind in _V1_THRESHOLD_KEYS.items():
                value = body.pop(key, None)
                if value is not None:
                    thresholds[threshold_kind] = _get({key: value}, key, (int, float), where)
        else:
            raw = body.pop("new_individual_thresholds", None) or {}
            if not isinstance(raw, Mapping):
                raise _fail(where, "'new_individual_thresholds' must be an object kind -> cosine")
            thresholds = dict(raw)
        sighting = body.pop("sighting_thresholds", None) or {}
        if not isinstance(sighting, Mapping):
            raise _fail(where, "'sighting_thresholds' must be an object kind -> score")
        raw_uncertainty = body.pop("uncertainty", None)
        raw_sighting_uncertainty = body.pop("sighting_uncertainty", None)
        aggregation = body.pop("sighting_aggregation", None)
        if aggregation is not None and not isinstance(aggregation, str):
            raise _fail(where, "'sighting_aggregation' must be a string or null")
        _check_unknown(cls, body, where)
        kwargs: dict[str, Any] = {}
        simple: dict[str, type | tuple[type, ...]] = {
            "backbone": str,
            "pooling": str,
            "neck": str,
            "embedding_size": int,
            "backbone_num_classes": int,
            "name": str,
            "members": int,
            "family": str,
            "test_time_flip": bool,
        }
        for key, kind in simple.items():
            if key in body:
                kwargs[key] = _get(body, key, kind, where)
        kwargs["new_individual_thresholds"] = thresholds
        kwargs["sighting_thresholds"] = dict(sighting)
        kwargs["sighting_aggregation"] = aggregation
        if raw_uncertainty is not None:
            kwargs["uncertainty"] = UncertaintyCalibration.from_dict(
                raw_uncertainty, f"{where}: uncertainty"
            )
        if raw_sighting_uncertainty is not None:
            kwargs["sighting_uncertainty"] = UncertaintyCalibration.from_dict(
                raw_sighting_uncertainty, f"{where}: sighting_uncertainty"
            )
        for key in ("license", "source"):
            if body.get(key) is not None:
                kwargs[key] = _get(body, key, str, where)
        if body.get("backbone_args") is not None:
            kwargs["backbone_args"] = _get(body, "backbone_args", Mapping, where)
        if body.get("head") is not None:
            kwargs["head"] = HeadConfig.from_dict(body["head"])
        if "preprocess" in body:
            kwargs["preprocess"] = PreprocessConfig.from_dict(body["preprocess"])
        return cls(**kwargs)

    def replace(self, **changes: Any) -> IdentifierConfig:
        """Return a copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def _checked_thresholds(values: Mapping[Any, Any], where: str) -> dict[EmbeddingKind, float]:
    """Per-kind cosine thresholds, checked, in canonical order, as a private copy."""
    thresholds: dict[EmbeddingKind, float] = {}
    for key, value in dict(values).items():
        kind = embedding_kind(key, f"{where}: threshold key")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(where, f"threshold for {kind!r} must be a number, got {value!r}")
        if not (math.isfinite(value) and -1.0 <= value <= 1.0):
            raise _fail(where, f"threshold for {kind!r} must be a cosine in [-1, 1], got {value!r}")
        thresholds[kind] = float(value)
    return {k: thresholds[k] for k in EMBEDDING_KINDS if k in thresholds}


def _checked_args(args: Mapping[Any, Any], where: str) -> dict[str, Any]:
    """Backbone constructor arguments: plain JSON values, bounded, none that reach files."""
    if not isinstance(args, Mapping):
        raise _fail(where, "backbone_args must be an object")
    count = 0

    def plain(value: Any, depth: int) -> Any:
        nonlocal count
        count += 1
        if count > _MAX_ARG_ITEMS or depth > 4:
            raise _fail(where, "backbone_args is too large or too deeply nested")
        if value is None or isinstance(value, bool | str):
            if isinstance(value, str) and len(value) > 200:
                raise _fail(where, "backbone_args holds an over-long string")
            return value
        if isinstance(value, int | float):
            if not math.isfinite(value) or abs(value) > 1e9:
                raise _fail(where, f"backbone_args holds an out-of-range number {value!r}")
            return value
        if isinstance(value, list | tuple):
            return [plain(v, depth + 1) for v in value]
        if isinstance(value, Mapping):
            return {_arg_key(k): plain(v, depth + 1) for k, v in value.items()}
        raise _fail(where, f"backbone_args holds a {type(value).__name__}; only JSON values")

    def _arg_key(key: Any) -> str:
        if not isinstance(key, str) or not _ARG_KEY.match(key):
            raise _fail(where, f"backbone_args key {str(key)[:40]!r} is not a plain name")
        return key

    out = {_arg_key(k): plain(v, 1) for k, v in args.items()}
    forbidden = sorted(set(out) & _FORBIDDEN_BACKBONE_ARGS)
    if forbidden:
        raise _fail(where, f"backbone_args may not set {forbidden}")
    return out


#: Largest JSON config (``config.json``, ``labels.json``, ``gate.json``) read.
MAX_CONFIG_BYTES = 64 * MiB


def read_json(path: Path) -> Any:
    """Read a JSON file, turning every failure into :class:`ConfigError` naming the file.

    Only regular files of at most :data:`MAX_CONFIG_BYTES`; deep nesting and huge
    integers are refused like bad syntax.
    """

    def fail(reason: str) -> ConfigError:
        return ConfigError(f"{path}: {reason}")

    data = read_regular(path, fail, max_bytes=MAX_CONFIG_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read (not UTF-8: {exc.reason})") from exc
    return parse_json(text, fail)
