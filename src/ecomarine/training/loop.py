"""The ArcFace training loop and its export to the weight format."""

from __future__ import annotations

import io
import json
import logging
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .._atomic import atomic_write_bytes, atomic_write_text
from .._device import conv_layout, resolve_device
from ..calibration import calibrate_identifier
from ..config import HeadConfig, IdentifierConfig, PreprocessConfig
from ..embedded import LITE_WEIGHTS, load_lite_imagenet
from ..errors import ConfigError, DataError, WeightsNotFoundError
from ..heads import ArcMarginProduct, SubCenterArcMarginProduct, dynamic_margins
from ..identifier import Identifier
from ..metrics import known_top_k_accuracy
from ..model_card import calibration_section, identifier_card
from ..search import rank_labelled
from ..types import EmbeddingKind
from .config import OFFLINE_BACKBONES, TrainConfig
from .data import (
    CatalogImages,
    IdentitySampler,
    Sample,
    read_catalog_csv,
    split_by_group_hash,
)
from .distill import (
    Teacher,
    class_distillation_loss,
    load_teacher,
    similarity_distillation_loss,
)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "build_model",
    "embed_catalog",
    "train",
]

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What training produced."""

    out: Path
    losses: list[float]
    validation: list[dict[str, float]]
    calibration: dict[str, Any]
    seconds: float


def build_model(cfg: TrainConfig, labels: Sequence[str], species: dict[str, str]) -> Identifier:
    """A fresh identifier with a pretrained backbone, a neck and an ArcFace head."""
    variant = OFFLINE_BACKBONES.get(cfg.backbone)
    backbone = LITE_WEIGHTS[variant][0] if variant else cfg.backbone
    config = IdentifierConfig(
        backbone=backbone,
        pooling=cfg.pooling,
        neck="bn",
        embedding_size=cfg.embedding_size,
        head=HeadConfig(type=cfg.head, s=cfg.s, m=cfg.m, k=cfg.subcenter_k),
        preprocess=PreprocessConfig(input_size=cfg.input_size),
        name=cfg.name,
    )
    model = Identifier(config, labels, species)
    if cfg.pretrained:
        if variant:
            import timm  # noqa: PLC0415

            full = timm.create_model(backbone, pretrained=False)
            load_lite_imagenet(full, variant)
            state = {k: v for k, v in full.state_dict().items() if not k.startswith("classifier.")}
            model.backbone.load_state_dict(state, strict=True)
        else:
            _load_timm_pretrained(model, backbone)
    return model


def _load_timm_pretrained(model: Identifier, name: str) -> None:
    import timm  # noqa: PLC0415

    try:
        pretrained = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as exc:  # timm surfaces Hub and network errors of many types
        raise WeightsNotFoundError(
            f"cannot get ImageNet weights for {name!r} ({type(exc).__name__}: {exc}); use "
            "--backbone embedded offline, or --no-pretrained"
        ) from exc
    model.backbone.load_state_dict(pretrained.state_dict(), strict=True)


def _param_groups(model: Identifier, cfg: TrainConfig) -> list[dict[str, Any]]:
    backbone_lr = cfg.backbone_lr if cfg.backbone_lr is not None else cfg.lr * 0.1
    head_params = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    return [
        {"params": list(model.backbone.parameters()), "lr": backbone_lr, "base_lr": backbone_lr},
        {"params": head_params, "lr": cfg.lr, "base_lr": cfg.lr},
    ]


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _seed_all(seed: int) -> np.random.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def embed_catalog(
    model: Identifier, images: CatalogImages, kind: EmbeddingKind = "embedding", batch: int = 64
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Unit-norm embeddings of cached catalogue images (central crops, no augmentation)."""
    model.eval()
    chunks = []
    for start in range(0, len(images), batch):
        idx = list(range(start, min(len(images), start + batch)))
        chunks.append(model.embed_tensor(images.batch(idx, None), kind).cpu().numpy())
    return np.concatenate(chunks).astype(np.float32)


def _search_metrics(
    gallery: np.ndarray[Any, Any],
    gallery_samples: Sequence[Sample],
    queries: np.ndarray[Any, Any],
    query_samples: Sequence[Sample],
) -> dict[str, float]:
    """Top-1/top-5 of labelled query vectors searched among labelled gallery vectors."""
    cands, truths = rank_labelled(
        gallery,
        [s.individual_id for s in gallery_samples],
        queries,
        [s.individual_id for s in query_samples],
    )
    return {
        "top1": known_top_k_accuracy(cands, truths, 1),
        "top5": known_top_k_accuracy(cands, truths, 5),
    }


def train(cfg: TrainConfig) -> TrainResult:
    """Train an identifier with ArcFace; write the weight format to ``cfg.out``.

    Raises:
        DataError: Bad CSVs or images. ConfigError: Bad options.
        WeightsNotFoundError: Pretrained weights that cannot be had offline.
    """
    started = time.perf_counter()
    out = Path(cfg.out)
    samples = read_catalog_csv(cfg.csv, cfg.images, columns=cfg.columns)
    calib: list[Sample] = []
    if cfg.calibration_csv:
        calib = read_catalog_csv(cfg.calibration_csv, cfg.images, columns=cfg.columns)
    elif cfg.calibration_fraction > 0:
        samples, calib = split_by_group_hash(samples, cfg.calibration_fraction)
    if not samples:
        raise DataError("no training samples left after the calibration split")
    labels = head_individuals(samples, cfg.head_min_encounters)
    label_index = {x: i for i, x in enumerate(labels)}
    species = {s.individual_id: s.species for s in samples if s.species}
    # -1: an individual out of the head (a negative only, see head_min_encounters).
    targets = np.array([label_index.get(s.individual_id, -1) for s in samples])
    if (targets < 0).any() and cfg.sampler != "random":
        raise ConfigError(
            "head_min_encounters > 1 needs sampler='random' (the identity samplers draw "
            "individuals of the head only)"
        )
    rng = _seed_all(cfg.seed)
    device = resolve_device(cfg.device)
    model = build_model(cfg, labels, species).to(device)
    if cfg.dynamic_margin and model.head is not None:
        counts = Counter(targets.tolist())
        margins = dynamic_margins([counts[i] for i in range(len(labels))], m_max=cfg.m)
        model.head.class_margins = margins.to(device)
    pp = model.config.preprocess
    augment = cfg.augment
    logger.info("decoding %d training images", len(samples))
    train_images = CatalogImages(samples, pp, augment, workers=cfg.workers)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(samples) // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    use_amp = device.type == "cuda"
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    teacher = _teacher(cfg, labels, pp, device)
    start_epoch, step = 0, 0
    losses: list[float] = []
    validation: list[dict[str, float]] = []
    ckpt_dir = out / "checkpoints"
    if cfg.resume:
        start_epoch, step, losses, validation, rng = _load_checkpoint(
            Path(cfg.resume), model, optimizer, scaler
        )
    val_images = None
    if cfg.val_csv:
        val_images = CatalogImages(
            read_catalog_csv(cfg.val_csv, cfg.images, columns=cfg.columns), pp, workers=cfg.workers
        )
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        if cfg.sampler in ("identity", "encounter"):
            per_id = max(1, cfg.images_per_id)
            groups = (
                [s.encounter or s.image for s in samples] if cfg.sampler == "encounter" else None
            )
            batches = list(
                IdentitySampler(targets.tolist(), cfg.batch_size // per_id, per_id, rng, groups)
            )
        else:
            order = rng.permutation(len(samples))
            batches = [
                order[i : i + cfg.batch_size].tolist()
                for i in range(0, steps_per_epoch * cfg.batch_size, cfg.batch_size)
            ]
        epoch_loss, seen, t0 = 0.0, 0, time.perf_counter()
        bar = _progress(len(batches), f"epoch {epoch + 1}/{cfg.epochs}")
        for batch in batches:
            x = conv_layout(train_images.batch(batch, rng), device)
            y = torch.as_tensor(targets[batch], device=device)
            factor = _lr_factor(step, total_steps, warmup)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            with torch.autocast(device.type, enabled=use_amp):
                if model.head is None:  # build_model always gives one
                    raise ConfigError("training needs an identifier with a head")
                emb = model(x)
                loss = _head_loss(model.head, emb, y)
                if teacher is not None:
                    loss = loss + _distillation(cfg, model, teacher, x, emb)
            if not bool(torch.isfinite(loss.detach())):
                raise DataError(
                    f"training loss became {float(loss.detach())} at epoch {epoch + 1}, step "
                    f"{step + 1}; lower --lr (now {cfg.lr}) or check the images"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            step += 1
            epoch_loss += float(loss.detach()) * len(batch)
            seen += len(batch)
            if bar is not None:
                rate = seen / max(1e-9, time.perf_counter() - t0)
                bar.set_postfix(loss=f"{epoch_loss / seen:.3f}", img_s=f"{rate:.1f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        losses.append(epoch_loss / max(1, seen))
        logger.info(
            "epoch %d/%d loss %.4f (%.1f img/s)",
            epoch + 1,
            cfg.epochs,
            losses[-1],
            seen / max(1e-9, time.perf_counter() - t0),
        )
        if val_images is not None and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
            metrics = _search_metrics(
                embed_catalog(model, train_images),
                train_images.samples,
                embed_catalog(model, val_images),
                val_images.samples,
            )
            metrics["epoch"] = epoch + 1
            validation.append(metrics)
            logger.info("validation after epoch %d: %s", epoch + 1, metrics)
        _save_checkpoint(
            ckpt_dir / "last.pt",
            cfg,
            model,
            optimizer,
            scaler,
            epoch + 1,
            step,
            losses,
            validation,
            rng,
        )
    model.eval()
    # Calibrate on the training device (a GPU embeds the files many times faster).
    calibration = (
        calibrate_identifier(
            model, samples, calib, new_fraction=cfg.calibration_new_fraction, workers=cfg.workers
        )
        if calib
        else {}
    )
    model = model.to(torch.device("cpu")).to(memory_format=torch.contiguous_format).eval()
    if model.head is not None:
        model.head.class_margins = None
    seconds = time.perf_counter() - started
    card = _training_card(model, cfg, samples, calib, losses, validation, calibration, seconds)
    model.save_pretrained(out, model_card=card)
    atomic_write_text(
        out / "training.json",
        json.dumps(
            {
                "config": cfg.to_dict(),
                "losses": losses,
                "validation": validation,
                "calibration": calibration,
                "seconds": seconds,
            },
            indent=2,
        )
        + "\n",
    )
    return TrainResult(out, losses, validation, calibration, seconds)


def head_individuals(samples: Sequence[Sample], min_encounters: int = 1) -> list[str]:
    """The individuals of the ArcFace head: those seen in ``min_encounters`` or more.

    A photo without an encounter counts as an encounter of its own.

    Raises:
        DataError: ``min_encounters > 1`` without any encounter column, or no individual
            left for the head.
    """
    if min_encounters <= 1:
        return sorted({s.individual_id for s in samples})
    if not any(s.encounter for s in samples):
        raise DataError(
            f"head_min_encounters={min_encounters} needs the encounter column in the catalogue"
        )
    seen: dict[str, set[str]] = {}
    for s in samples:
        seen.setdefault(s.individual_id, set()).add(s.encounter or s.image)
    labels = sorted(i for i, groups in seen.items() if len(groups) >= min_encounters)
    if not labels:
        raise DataError(f"no individual is seen in {min_encounters} or more encounters")
    logger.info(
        "%d of %d individuals in the head (seen in >= %d encounters); the other %d train as "
        "negatives",
        len(labels),
        len(seen),
        min_encounters,
        len(seen) - len(labels),
    )
    return labels


def _head_loss(
    head: ArcMarginProduct | SubCenterArcMarginProduct, emb: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """ArcFace cross-entropy, and the entropic open-set loss for rows labelled -1.

    Rows out of the head are pushed away from every class centre: a uniform target over
    the classes (Dhamija et al. 2018), on logits without the margin.
    """
    inside = y >= 0
    if bool(inside.all()):
        return F.cross_entropy(head(emb, y).float(), y)
    total = torch.zeros((), device=emb.device)
    if bool(inside.any()):
        total = total + F.cross_entropy(
            head(emb[inside], y[inside]).float(), y[inside], reduction="sum"
        )
    outside = head(emb[~inside]).float()
    total = total - F.log_softmax(outside, dim=1).mean(dim=1).sum()
    return total / len(y)


def _teacher(
    cfg: TrainConfig, labels: Sequence[str], pp: PreprocessConfig, device: torch.device
) -> Teacher | None:
    if not cfg.teacher:
        return None
    teacher = Teacher(load_teacher(cfg.teacher), labels, pp, need_classes=cfg.distill_weight > 0)
    return teacher.to(device)


def _distillation(
    cfg: TrainConfig, model: Identifier, teacher: Teacher, x: torch.Tensor, emb: torch.Tensor
) -> torch.Tensor:
    """The distillation terms of the loss for one batch (student embeddings ``emb``)."""
    target_emb, target_logits = teacher.targets(x)
    loss = torch.zeros((), device=emb.device)
    if target_logits is not None and model.head is not None:
        student_logits = model.head.cosine(emb) * model.head.s
        loss = loss + cfg.distill_weight * class_distillation_loss(
            student_logits, target_logits, cfg.distill_temperature
        )
    if cfg.distill_similarity > 0:
        loss = loss + cfg.distill_similarity * similarity_distillation_loss(emb, target_emb)
    return loss


def _progress(total: int, desc: str) -> Any:
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm  # noqa: PLC0415 - optional nicety on terminals only

    return tqdm(total=total, desc=desc, unit="batch", leave=False)


def _save_checkpoint(
    path: Path,
    cfg: TrainConfig,
    model: Identifier,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    epoch: int,
    step: int,
    losses: list[float],
    validation: list[dict[str, float]],
    rng: np.random.Generator,
) -> None:
    state = {
        "format": "ecomarine-train-checkpoint-1",
        "config": json.dumps(cfg.to_dict()),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": epoch,
        "step": step,
        "losses": losses,
        "validation": json.dumps(validation),
        "numpy_rng": json.dumps(rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(),
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load_checkpoint(
    path: Path,
    model: Identifier,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> tuple[int, int, list[float], list[dict[str, float]], np.random.Generator]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such checkpoint") from exc
    except Exception as exc:  # torch raises several types on corrupt files
        raise DataError(f"{path}: not a readable training checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != "ecomarine-train-checkpoint-1":
        raise DataError(f"{path}: not an ecomarine training checkpoint")
    model.load_state_dict(state["model"], strict=True)
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["torch_rng"])
    rng = np.random.default_rng()
    rng.bit_generator.state = json.loads(state["numpy_rng"])
    return (
        int(state["epoch"]),
        int(state["step"]),
        list(state["losses"]),
        json.loads(state["validation"]),
        rng,
    )


def _training_card(
    model: Identifier,
    cfg: TrainConfig,
    samples: list[Sample],
    calib: list[Sample],
    losses: list[float],
    validation: list[dict[str, float]],
    calibration: dict[str, Any],
    seconds: float,
) -> str:
    n_ids = len({s.individual_id for s in samples})
    lines = [
        "## Training",
        "",
        "```bash",
        cfg.command,
        "```",
        "",
        f"- data: {len(samples)} images of {n_ids} individuals from `{cfg.csv}`",
        f"- calibration queries (held out from training): {len(calib)}",
        f"- epochs: {cfg.epochs}, batch size {cfg.batch_size}, lr {cfg.lr}, "
        f"head {cfg.head} (s={cfg.s}, m={cfg.m}{', dynamic margins' if cfg.dynamic_margin else ''})",
        f"- training time: {seconds / 60:.1f} min; final loss {losses[-1]:.4f}" if losses else "",
    ]
    if cfg.teacher:
        lines.append(
            f"- distilled from {', '.join(f'`{t}`' for t in cfg.teacher)} (class weight "
            f"{cfg.distill_weight}, temperature {cfg.distill_temperature}; similarity weight "
            f"{cfg.distill_similarity})"
        )
    if validation:
        lines += ["", "### Validation", "", "```json", json.dumps(validation, indent=1), "```"]
    lines += calibration_section(calibration)
    return identifier_card(model, extra="\n".join(lines))
