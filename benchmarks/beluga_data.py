"""Write the CSVs of the beluga next-season protocol (DESIGN.md) from the shared metadata.

Splits (all columns: image,individual_id,encounter,date,species):

* ``train.csv``: 2017 and 2018 images, minus the calibration encounters;
* ``calibration.csv``: a fixed fifth of the 2018 encounters, chosen by a hash of
  ``encounter_id`` (held out from training; queries for the open-set threshold);
* ``gallery.csv``: every 2017 and 2018 image (the evaluation gallery);
* ``queries.csv``: every 2019 image.

``--shrink-to DIR --size HxW`` also writes the training and calibration images, resized
exactly as training's image cache resizes them for that input size (JPEG, quality 90),
with ``metadata.csv``: a copy small enough to send to another machine for training
(``beluga_train.py --data DIR``). Evaluation always reads the original images.

Usage: python benchmarks/beluga_data.py --data ../shared/data/beluga --out runs/beluga
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

from ecomarine.config import PreprocessConfig
from ecomarine.training import (
    AugmentConfig,
    Sample,
    cache_view,
    read_catalog_csv,
    split_by_group_hash,
)

FIELDS = ["image", "individual_id", "encounter", "date", "species"]


def _write(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def prepare(data: Path, out: Path) -> dict[str, int]:
    """Write the four CSVs and return their row counts."""
    out.mkdir(parents=True, exist_ok=True)
    with (data / "metadata.csv").open(newline="", encoding="utf-8") as fh:
        meta = list(csv.DictReader(fh))
    rows = [
        {
            "image": r["path"],
            "individual_id": r["whale_id"],
            "encounter": r["encounter_id"],
            "date": r["date"],
            "species": "beluga",
        }
        for r in meta
    ]
    past = [r for r in rows if r["date"][:4] in ("2017", "2018")]
    queries = [r for r in rows if r["date"][:4] == "2019"]
    y2018 = [r for r in past if r["date"][:4] == "2018"]
    as_samples = [
        Sample(Path(r["image"]), r["image"], r["individual_id"], encounter=r["encounter"])
        for r in y2018
    ]
    _, held = split_by_group_hash(as_samples, 0.2)
    held_images = {s.image for s in held}
    calibration = [r for r in past if r["image"] in held_images]
    train = [r for r in past if r["image"] not in held_images]
    for name, part in (
        ("train", train),
        ("calibration", calibration),
        ("gallery", past),
        ("queries", queries),
    ):
        _write(out / f"{name}.csv", part)
    return {
        "train": len(train),
        "calibration": len(calibration),
        "gallery": len(past),
        "queries": len(queries),
    }


def season_turnover(gallery_csv: Path, *, per: str = "image") -> float:
    """Share of 2018 images (``per="image"``) or of 2018 encounters (``per="encounter"``,
    the sightings) whose whale does not appear in 2017."""
    with gallery_csv.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    seen_2017 = {r["individual_id"] for r in rows if r["date"].startswith("2017")}
    y2018 = [r for r in rows if r["date"].startswith("2018")]
    if per == "encounter":
        y2018 = list({r["encounter"]: r for r in y2018}.values())
    return sum(r["individual_id"] not in seen_2017 for r in y2018) / len(y2018)


def shrink(data: Path, splits: Path, out: Path, input_size: tuple[int, int]) -> int:
    """Write the training-cache view of the train and calibration images under ``out``."""
    pp, pad = PreprocessConfig(input_size=input_size), AugmentConfig().pad
    n = 0
    for name in ("train", "calibration"):
        for sample in read_catalog_csv(splits / f"{name}.csv", data):
            target = out / sample.image
            target.parent.mkdir(parents=True, exist_ok=True)
            cache_view(sample.path, pp, pad).save(target, "JPEG", quality=90)
            n += 1
    shutil.copy(data / "metadata.csv", out / "metadata.csv")
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/beluga"))
    parser.add_argument("--out", type=Path, default=Path("runs/beluga"))
    parser.add_argument("--shrink-to", type=Path, default=None)
    parser.add_argument("--size", default="320x112", help="training input HxW (--shrink-to)")
    args = parser.parse_args()
    print(prepare(args.data, args.out))
    if args.shrink_to is not None:
        h, w = (int(x) for x in args.size.split("x"))
        print(f"{shrink(args.data, args.out, args.shrink_to, (h, w))} images -> {args.shrink_to}")


if __name__ == "__main__":
    main()
