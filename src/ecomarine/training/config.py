"""What training takes: :class:`TrainConfig` with its :class:`AugmentConfig`, declared once.

Each field carries its help text and range (:func:`ecomarine._fields.option`); the
``ecomarine train`` options are derived from these declarations, and the same ranges are
checked when a config is built in Python. This module imports no torch, so the CLI can
build its options without loading the training loop.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import asdict, dataclass
from typing import Any

from .._fields import check_fields, option
from ..errors import ConfigError, DataError

__all__ = ["EMBEDDED_BACKBONE", "OFFLINE_BACKBONES", "AugmentConfig", "TrainConfig"]

#: ``--backbone embedded``: timm's Lite0 initialised from the shipped ImageNet weights.
EMBEDDED_BACKBONE = "embedded"
#: Offline ImageNet starts: the name of ``TrainConfig.backbone`` -> EfficientNet-Lite variant.
OFFLINE_BACKBONES = {EMBEDDED_BACKBONE: "lite0", "embedded-lite2": "lite2"}


@dataclass(frozen=True)
class AugmentConfig:
    """Identity-preserving augmentation.

    Flips are off by default: mirroring a flank or a back swaps left and right markings,
    which makes a different-looking animal.

    Attributes:
        pad: Fraction of extra border decoded around the input (random crops shift the
            animal by up to this much).
        brightness: Maximum relative brightness change. contrast: Same, for contrast.
        hflip: Random horizontal flips. vflip: Random vertical flips.
        rotate: Maximum rotation in degrees (0 = none).
        zoom: Maximum relative zoom in or out (0.15 = 0.87x to 1.15x; 0 = none).
        erase: Probability of blanking one random rectangle (2-20 % of the input) per
            image, so that no single mark can carry an identity.
    """

    pad: float = option(
        0.08,
        "Extra border around the input for random shifts (fraction).",
        min=0,
        max=1,
        max_open=True,
    )
    brightness: float = option(0.2, "Maximum relative brightness jitter.", min=0, max=1)
    contrast: float = option(0.2, "Maximum relative contrast jitter.", min=0, max=1)
    hflip: bool = option(False, "Horizontal flips (swap left/right markings!).")
    vflip: bool = option(False, "Vertical flips.")
    rotate: float = option(0.0, "Random rotation, at most this many degrees.", min=0, max=180)
    zoom: float = option(
        0.0, "Random zoom in or out by up to this fraction.", min=0, max=1, max_open=True
    )
    erase: float = option(
        0.0, "Probability of random erasing (one rectangle per image).", min=0, max=1
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.pad < 1.0 or not 0.0 <= self.zoom < 1.0:
            raise DataError("pad and zoom must be in [0, 1)")
        if not 0.0 <= self.rotate <= 180.0:
            raise DataError("rotate must be in [0, 180] degrees")
        if not 0.0 <= self.erase <= 1.0:
            raise DataError("erase is a probability in [0, 1]")
        check_fields(self, DataError)

    @property
    def geometric(self) -> bool:
        """Whether rotation or zoom is on (they need resampling, not just a crop)."""
        return self.rotate > 0 or self.zoom > 0


def _command() -> str:
    return shlex.join(["ecomarine", *sys.argv[1:]])


@dataclass
class TrainConfig:
    """Everything ``ecomarine train`` takes; saved with checkpoints and in the model card.

    Every field is an option of ``ecomarine train`` (``--`` + the name with dashes; the
    augmentation fields without a prefix), except ``command``, which records how training
    was started.
    """

    csv: str = option(
        help="Training catalogue: image,individual_id[,species,encounter,date].", path="file"
    )
    images: str = option(help="Folder the CSV's image paths are relative to.", path="dir")
    out: str = option(help="Output model folder.")
    backbone: str = option(
        EMBEDDED_BACKBONE,
        '"embedded" (offline Lite0), "embedded-lite2" (offline Lite2, extra lite2) or any '
        "timm name.",
    )
    pretrained: bool = option(True, "Start from ImageNet weights.")
    input_size: tuple[int, int] = option(
        (256, 96), "Network input, height x width.", min=8, max=2048, metavar="HxW"
    )
    embedding_size: int = option(512, "Embedding dimension.", min=8, max=8192)
    pooling: str = option(
        "gem",
        "Pooling of the feature map ('gem2': GeM over the last two stages, concatenated).",
        choices=("gem", "gem2", "avg"),
    )
    head: str = option("arcface", "Metric-learning head.", choices=("arcface", "subcenter"))
    subcenter_k: int = option(3, "Sub-centres per individual (subcenter head).", min=1, max=64)
    dynamic_margin: bool = option(False, "Per-class margins from class frequency.")
    head_min_encounters: int = option(
        1,
        "Individuals seen in fewer encounters stay out of the ArcFace head; their photos "
        "still train, as negatives pushed away from every class centre (entropic open-set "
        "loss). Needs the encounter column.",
        min=1,
        max=1000,
    )
    s: float = option(30.0, "ArcFace logit scale.", min=0, min_open=True, max=1000)
    m: float = option(0.5, "ArcFace angular margin (radians).", min=0, max=1.5)
    epochs: int = option(10, "Training epochs.", min=1, max=10000)
    batch_size: int = option(32, "Images per step.", min=2, max=4096)
    lr: float = option(1e-3, "Learning rate of the neck and head.", min=0, min_open=True, max=10)
    backbone_lr: float | None = option(
        None, "Learning rate of the backbone (default: lr / 10).", min=0, min_open=True, max=10
    )
    weight_decay: float = option(1e-4, "AdamW weight decay.", min=0, max=10)
    warmup_epochs: float = option(1.0, "Linear learning-rate warm-up, in epochs.", min=0, max=1000)
    grad_clip: float = option(5.0, "Gradient-norm clipping.", min=0, min_open=True, max=1e6)
    sampler: str = option(
        "random",
        "Batches: random; identities with several photos each; or 'encounter', identities "
        "with photos from different encounters.",
        choices=("random", "identity", "encounter"),
    )
    images_per_id: int = option(
        2, "Photos per identity in a batch (identity sampler).", min=1, max=256
    )
    augment: AugmentConfig = option(
        default_factory=AugmentConfig, help="Identity-preserving augmentation."
    )
    teacher: tuple[str, ...] = option(
        (), "Distil this trained identifier (repeat: an ensemble of them) into the new one."
    )
    distill_weight: float = option(
        1.0, "Weight of the teacher's class distribution (needs its head).", min=0, max=1e4
    )
    distill_temperature: float = option(
        4.0, "Softmax temperature of the class distillation.", min=0, min_open=True, max=1e4
    )
    distill_similarity: float = option(
        0.0, "Weight of the teacher's similarities between the photos of a batch.", min=0, max=1e4
    )
    val_csv: str | None = option(None, "Validation queries (top-1/top-5 per epoch).", path="file")
    val_every: int = option(1, "Validate every this many epochs.", min=1, max=10000)
    calibration_csv: str | None = option(
        None, "Held-out queries for the open-set threshold.", path="file"
    )
    calibration_fraction: float = option(
        0.0, "Hold out this share of encounters for calibration instead.", min=0, max=0.9
    )
    calibration_new_fraction: float | None = option(
        None,
        "Expected share of new individuals among future queries.",
        min=0,
        max=1,
        min_open=True,
        max_open=True,
    )
    resume: str | None = option(None, "A checkpoint (out/checkpoints/last.pt).", path="file")
    seed: int = option(0, "Random seed.", min=0, max=2**32 - 1)
    device: str | None = option(None, "cpu, cuda, mps (default: best available).")
    workers: int = option(2, "Decode threads.", min=1, max=64)
    name: str = option("custom", "Model name (cards and predictions).")
    command: str = option(
        default_factory=_command, help="The command that started training.", cli=False
    )
    columns: dict[str, str] = option(
        default_factory=dict,
        help="The CSVs' own column names, by catalogue field ({'individual_id': 'whale_id'}).",
        cli=False,
    )

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("epochs must be >= 1 and batch_size >= 2")
        if self.head not in ("arcface", "subcenter"):
            raise ConfigError("head must be 'arcface' or 'subcenter'")
        if self.sampler not in ("random", "identity", "encounter"):
            raise ConfigError("sampler must be 'random', 'identity' or 'encounter'")
        if self.lr <= 0:
            raise ConfigError("lr must be positive")
        self.teacher = tuple(self.teacher)
        if self.distill_weight < 0 or self.distill_similarity < 0:
            raise ConfigError("distillation weights must be >= 0")
        if self.distill_temperature <= 0:
            raise ConfigError("distill_temperature must be positive")
        if self.teacher and self.distill_weight == 0 and self.distill_similarity == 0:
            raise ConfigError("a teacher needs distill_weight > 0 or distill_similarity > 0")
        self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        self.columns = dict(self.columns)
        check_fields(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``training.json``, checkpoints)."""
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        data["teacher"] = list(self.teacher)
        return data
