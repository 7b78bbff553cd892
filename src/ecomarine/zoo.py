"""The known model sources: the field's published re-identification and general models.

Each :class:`KnownModel` names a source that :meth:`Identifier.from_pretrained` accepts,
with what ``ecomarine models`` shows: architecture, input, licence, training data, the
figures its authors report, and whether its files are in the local Hugging Face cache.
Where a model's own card or code preprocesses differently from its ``config.json``, the
entry carries the card's preprocessing, and loading uses it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .config import PreprocessConfig

__all__ = [
    "KNOWN_MODELS",
    "LICENSE_LOGGER",
    "KnownModel",
    "card_license",
    "is_cached",
    "known_model",
    "non_commercial",
]

#: The logger that says the licence of imported weights when they load (the CLI always
#: shows it).
LICENSE_LOGGER = "ecomarine.license"
_HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class KnownModel:
    """A documented model source.

    Attributes:
        source: What to pass to ``from_pretrained`` (``"hf-hub:owner/name"`` or a bundled
            name).
        layout: How its files are laid out: ``"bundled"``, ``"timm"``, ``"miewid"`` or
            ``"open_clip"``.
        architecture: The network.
        input_size: ``(height, width)``.
        license: The weights' licence as their publisher states it.
        trained_on: What the weights were trained on.
        reported: Figures the authors report, with the split.
        files: The files that hold the weights (for the cache check).
        preprocess: The card's preprocessing, where it differs from what the config file
            says (otherwise the config file's, or the layout's documented default, is used).
    """

    source: str
    layout: str
    architecture: str
    input_size: tuple[int, int]
    license: str
    trained_on: str
    reported: str
    files: tuple[str, ...] = ()
    preprocess: PreprocessConfig | None = None

    @property
    def repo_id(self) -> str | None:
        """The Hub repository, for Hub sources."""
        return self.source[len("hf-hub:") :] if self.source.startswith("hf-hub:") else None


def _mega(size: str, arch: str, side: int, reported: str) -> KnownModel:
    # The model card's transform: T.Resize((side, side)), ToTensor, Normalize(0.5, 0.5)
    # (torchvision's default bilinear); the config.json's timm pretrained_cfg says
    # otherwise (ImageNet mean/std, bicubic, crop_pct 0.9), and the card is what the
    # authors evaluate with (wildlife-tools' examples).
    return KnownModel(
        source=f"hf-hub:BVRA/MegaDescriptor-{size}-{side}",
        layout="timm",
        architecture=f"Swin ({arch})",
        input_size=(side, side),
        license="cc-by-nc-4.0",
        trained_on="WildlifeDatasets: re-identification datasets of many species "
        "(BelugaID among them)",
        reported=reported,
        files=("config.json", "pytorch_model.bin"),
        preprocess=PreprocessConfig(
            input_size=(side, side), mean=_HALF, std=_HALF, interpolation="bilinear"
        ),
    )


def _miewid(version: str, trained_on: str, reported: str) -> KnownModel:
    # No preprocessing here: the layout's own default is the card's (440 x 440 squash,
    # ImageNet mean/std), and the licence is read from the repository's card.
    return KnownModel(
        source=f"hf-hub:conservationxlabs/miewid-{version}",
        layout="miewid",
        architecture="EfficientNetV2-M (efficientnetv2_rw_m), GeM, BatchNorm neck",
        input_size=(440, 440),
        license="see the repository's card (read at load)",
        trained_on=trained_on,
        reported=reported,
        files=("config.json", "model.safetensors"),
    )


def _dinov2(size: str, arch: str) -> KnownModel:
    return KnownModel(
        source=f"hf-hub:timm/{arch}.lvd142m",
        layout="timm",
        architecture=f"ViT-{size}/14 DINOv2 ({arch})",
        input_size=(518, 518),
        license="apache-2.0",
        trained_on="LVD-142M (self-supervised, no labels); general features",
        reported="no re-identification figures from its authors",
        files=("config.json", "model.safetensors"),
    )


#: The documented sources, in the order ``ecomarine models`` lists them.
KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel(
        source="embedded",
        layout="bundled",
        architecture="EfficientNet-Lite0, GeM, 512-d BatchNorm neck",
        input_size=(320, 112),
        license="apache-2.0",
        trained_on="Cook Inlet beluga top views 2017-2018 (Beluga ID 2022)",
        reported="see docs/benchmarks.md (2019 season, never fitted)",
    ),
    KnownModel(
        source="embedded-imagenet",
        layout="bundled",
        architecture="EfficientNet-Lite0, average pooling",
        input_size=(224, 224),
        license="apache-2.0",
        trained_on="ImageNet-1k (classification); general features",
        reported="none for re-identification",
    ),
    _mega("T", "swin_tiny_patch4_window7_224", 224, "1-NN 33 % on BelugaID (closed split)"),
    _mega("S", "swin_small_patch4_window7_224", 224, "see the WildlifeDatasets paper"),
    _mega("B", "swin_base_patch4_window7_224", 224, "see the WildlifeDatasets paper"),
    _mega("L", "swin_large_patch4_window7_224", 224, "see the WildlifeDatasets paper"),
    _mega("L", "swin_large_patch4_window12_384", 384, "1-NN 66.5 % on BelugaID (closed split)"),
    _miewid(
        "msv2",
        "Wild Me's multi-species catalogues (MiewID msv2)",
        "+19 points top-1 over MegaDescriptor-L-384 on unseen species (its authors, their split)",
    ),
    _miewid("msv3", "Wild Me's catalogues of 49 species (MiewID msv3)", "see its card"),
    _dinov2("S", "vit_small_patch14_dinov2"),
    _dinov2("B", "vit_base_patch14_dinov2"),
    _dinov2("L", "vit_large_patch14_dinov2"),
    KnownModel(
        source="hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        layout="open_clip",
        architecture="OpenCLIP ViT-B/32 image tower",
        input_size=(224, 224),
        license="mit",
        trained_on="LAION-2B image-text pairs; general features",
        reported="no re-identification figures from its authors",
        files=("open_clip_config.json", "open_clip_model.safetensors"),
    ),
)

_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.DOTALL)
_LICENSE_LINE = re.compile(r"^license:\s*['\"]?([A-Za-z0-9.+_-]{1,64})['\"]?\s*$", re.MULTILINE)


def known_model(source: str) -> KnownModel | None:
    """The registry entry of a source (``"hf-hub:owner/name"``, ``"owner/name"``), if any."""
    text = source if source.startswith("hf-hub:") or "/" not in source else f"hf-hub:{source}"
    for model in KNOWN_MODELS:
        if model.source.lower() == text.lower():
            return model
    return None


def card_license(readme: Path) -> str | None:
    """The ``license:`` of a Hugging Face model card's front matter, if it states one."""
    try:
        head = readme.read_text(encoding="utf-8", errors="replace")[:20_000]
    except OSError:
        return None
    front = _FRONT_MATTER.match(head)
    if front is None:
        return None
    found = _LICENSE_LINE.search(front.group(1))
    return found.group(1).lower() if found else None


def non_commercial(license_id: str | None) -> bool:
    """Whether a licence forbids commercial use (the Creative Commons NC family)."""
    return license_id is not None and bool(re.search(r"(^|-)nc(-|$)", license_id.lower()))


def is_cached(model: KnownModel, cache_dir: str | os.PathLike[str] | None = None) -> bool:
    """Whether every weights file of a Hub source is in the local Hugging Face cache."""
    if model.repo_id is None:
        return True  # bundled with the package
    from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415 - only when asked

    cache = None if cache_dir is None else os.fspath(cache_dir)
    return all(
        isinstance(try_to_load_from_cache(model.repo_id, name, cache_dir=cache), str)
        for name in model.files
    )
