"""Combine trained beluga identifiers into one ensemble identifier and calibrate it.

The members are folders written by ``beluga_train.py`` (same architecture and input
size, for example two seeds of one recipe). This is ``ecomarine ensemble`` with the
protocol's files: the ensemble concatenates the members' unit-norm embeddings, is stored
in float16 (half the size; loading casts back to float32), and gets its own open-set
thresholds, chosen on the held-out calibration split exactly as ``beluga_train.py`` does
for one network -- after the float16 rounding, on the weights that ship -- with new
individuals weighted to the 2017 -> 2018 turnover. 2019 data is never used.

Usage:
    python benchmarks/beluga_train.py --seed 0 --out runs/beluga-seed0
    python benchmarks/beluga_train.py --seed 1 --out runs/beluga-seed1
    python benchmarks/beluga_ensemble.py --members runs/beluga-seed0 runs/beluga-seed1 \\
        --out runs/beluga-ensemble
    python benchmarks/beluga.py --model runs/beluga-ensemble
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
from beluga_data import prepare, season_turnover

from ecomarine import Identifier
from ecomarine.ensemble import build_ensemble, ensemble_card
from ecomarine.training import read_catalog_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/beluga"))
    parser.add_argument("--splits", type=Path, default=Path("runs/beluga"))
    parser.add_argument("--members", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/beluga-ensemble"))
    parser.add_argument("--name", default="embedded-beluga-lite0x2")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.perf_counter()
    prepare(args.data, args.splits)
    turnover = season_turnover(args.splits / "gallery.csv")
    model, calibration = build_ensemble(
        [Identifier.from_pretrained(m, device="cpu") for m in args.members],
        name=args.name,
        train_samples=read_catalog_csv(args.splits / "train.csv", args.data),
        calibration_samples=read_catalog_csv(args.splits / "calibration.csv", args.data),
        new_fraction=turnover,
        dtype=torch.float16,
    )
    command = "python benchmarks/beluga_ensemble.py --members " + " ".join(
        str(m) for m in args.members
    )
    card = ensemble_card(model, command, args.members, calibration)
    model.save_pretrained(args.out, model_card=card, dtype=torch.float16)
    seconds = time.perf_counter() - started
    summary = {"command": command, "turnover": turnover, "calibration": calibration}
    (args.out / "ensemble.json").write_text(json.dumps(summary, indent=2) + "\n")
    logging.info("wrote %s in %.0f s; calibration %s", args.out, seconds, calibration)


if __name__ == "__main__":
    main()
