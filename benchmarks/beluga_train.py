"""Train the embedded identifier on the beluga protocol's training split (CPU recipe).

Recipe of the shipped embedded model (the defaults): EfficientNet-Lite0 from the shipped
ImageNet weights, 320x112 input, GeM + 512-d BatchNorm neck, ArcFace (s=30, m=0.4),
AdamW (head 1e-3, backbone 3e-4), one warm-up epoch then cosine decay, 16 epochs;
augmentation: small shifts and brightness/contrast jitter, no flips. ``--rotate``,
``--zoom`` and ``--erase`` add stronger augmentation (tried: it did not help on 2019).
The open-set thresholds are calibrated on the held-out calibration split, weighting new
individuals by the 2017 -> 2018 turnover (the share of 2018 images whose whale was not
seen in 2017) -- 2019 data is never used.

``--teacher DIR...`` distils one trained identifier, or several combined into an
ensemble, into the new network (``--distill-weight``: class distribution,
``--distill-similarity``: batch similarities). ``--no-calibrate`` skips the calibration
(``ecomarine calibrate`` can set the thresholds later) and validates on the calibration
split after each epoch instead.

Usage:
    python benchmarks/beluga_train.py --data ../shared/data/beluga --out runs/beluga-model
    python benchmarks/beluga_train.py --epochs 18 --rotate 10 --zoom 0.15 --erase 0.5 --out runs/model-aug18
    python benchmarks/beluga_train.py --teacher runs/t0 runs/t1 runs/t2 --out runs/student
    python benchmarks/beluga_train.py --mimic --out runs/mimic2017   # 2017 only (selection)
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

from beluga_data import prepare, season_turnover

from ecomarine.training import AugmentConfig, TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/beluga"))
    parser.add_argument("--splits", type=Path, default=Path("runs/beluga"))
    parser.add_argument("--out", type=Path, default=Path("runs/beluga-model"))
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input-size", default="320x112", help="HxW")
    parser.add_argument("--rotate", type=float, default=0.0, help="max rotation, degrees")
    parser.add_argument("--zoom", type=float, default=0.0, help="max relative zoom")
    parser.add_argument("--erase", type=float, default=0.0, help="random-erasing probability")
    parser.add_argument("--m", type=float, default=0.4, help="ArcFace margin")
    parser.add_argument("--head", choices=["arcface", "subcenter"], default="arcface")
    parser.add_argument("--subcenter-k", type=int, default=3, help="sub-centres per whale")
    parser.add_argument(
        "--dynamic-margin", action="store_true", help="per-whale margins from photo counts"
    )
    parser.add_argument("--pooling", choices=["gem", "gem2"], default="gem")
    parser.add_argument(
        "--backbone",
        choices=["embedded", "embedded-lite2"],
        default="embedded",
        help="ImageNet EfficientNet-Lite0 (shipped) or -Lite2 (extra lite2), both offline",
    )
    parser.add_argument("--hflip", action="store_true", help="random horizontal flips")
    parser.add_argument(
        "--head-min-encounters",
        type=int,
        default=1,
        help="whales seen in fewer encounters: negatives only, out of the ArcFace head",
    )
    parser.add_argument("--sampler", choices=["random", "identity", "encounter"], default="random")
    parser.add_argument("--images-per-id", type=int, default=4, help="identity/encounter sampler")
    parser.add_argument("--teacher", nargs="+", default=[], help="identifier folder(s)")
    parser.add_argument("--distill-weight", type=float, default=1.0)
    parser.add_argument("--distill-temperature", type=float, default=4.0)
    parser.add_argument("--distill-similarity", type=float, default=0.0)
    parser.add_argument("--no-calibrate", action="store_true")
    parser.add_argument(
        "--mimic",
        action="store_true",
        help="recipe-selection mimic (DESIGN.md): train on 2017 only, no calibration",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best)")
    parser.add_argument("--workers", type=int, default=2, help="decode threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    prepare(args.data, args.splits)
    turnover = season_turnover(args.splits / "gallery.csv")
    train_csv = args.splits / "train.csv"
    if args.mimic:
        train_csv = mimic_split(args.splits)
        args.no_calibrate = True
    logging.info(
        "2017 -> 2018 turnover (new-individual share used for calibration): %.3f", turnover
    )
    result = train(
        TrainConfig(
            csv=str(train_csv),
            images=str(args.data),
            out=str(args.out),
            backbone=args.backbone,
            input_size=(int(args.input_size.split("x")[0]), int(args.input_size.split("x")[1])),
            embedding_size=512,
            pooling=args.pooling,
            head=args.head,
            head_min_encounters=args.head_min_encounters,
            subcenter_k=args.subcenter_k,
            dynamic_margin=args.dynamic_margin,
            sampler=args.sampler,
            images_per_id=args.images_per_id,
            s=30.0,
            m=args.m,
            epochs=args.epochs,
            batch_size=32,
            lr=1e-3,
            backbone_lr=3e-4,
            warmup_epochs=1.0,
            augment=AugmentConfig(
                rotate=args.rotate, zoom=args.zoom, erase=args.erase, hflip=args.hflip
            ),
            calibration_csv=None if args.no_calibrate else str(args.splits / "calibration.csv"),
            calibration_new_fraction=turnover,
            val_csv=str(args.splits / "calibration.csv")
            if args.no_calibrate and not args.mimic
            else None,
            teacher=tuple(args.teacher),
            distill_weight=args.distill_weight,
            distill_temperature=args.distill_temperature,
            distill_similarity=args.distill_similarity,
            device=args.device,
            workers=args.workers,
            seed=args.seed,
            name="beluga-mimic-2017" if args.mimic else "embedded-beluga-lite0",
            command=(
                f"python benchmarks/beluga_train.py --epochs {args.epochs} --seed {args.seed} "
                f"--input-size {args.input_size} --rotate {args.rotate} --zoom {args.zoom} "
                f"--erase {args.erase} --m {args.m}"
                + (
                    f" --head subcenter --subcenter-k {args.subcenter_k}"
                    if args.head == "subcenter"
                    else ""
                )
                + (" --dynamic-margin" if args.dynamic_margin else "")
                + (f" --pooling {args.pooling}" if args.pooling != "gem" else "")
                + (f" --backbone {args.backbone}" if args.backbone != "embedded" else "")
                + (" --hflip" if args.hflip else "")
                + (
                    f" --head-min-encounters {args.head_min_encounters}"
                    if args.head_min_encounters > 1
                    else ""
                )
                + (
                    f" --sampler {args.sampler} --images-per-id {args.images_per_id}"
                    if args.sampler != "random"
                    else ""
                )
                + _distill_args(args)
                + (" --mimic" if args.mimic else "")
            ),
        )
    )
    logging.info("done in %.1f min; calibration %s", result.seconds / 60, result.calibration)


def mimic_split(splits: Path) -> Path:
    """``mimic2017.csv``: the 2017 rows of the training split (the mimic's training set)."""
    with (splits / "train.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    out = splits / "mimic2017.csv"
    with out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r["date"].startswith("2017"))
    return out


def _distill_args(args: argparse.Namespace) -> str:
    if not args.teacher:
        return ""
    return (
        f" --teacher {' '.join(args.teacher)} --distill-weight {args.distill_weight} "
        f"--distill-temperature {args.distill_temperature} "
        f"--distill-similarity {args.distill_similarity}"
    )


if __name__ == "__main__":
    main()
