"""The beluga next-season benchmark (DESIGN.md), end to end.

Gallery: every 2017 and 2018 image. Queries: every 2019 image; a query whose whale never
appears in 2017-2018 must be answered ``new_individual``. The open-set threshold is the
one shipped with the model (calibrated on held-out 2018 encounters, never on 2019).

Writes ``benchmarks/results/beluga.json`` and ``benchmarks/results/beluga.md``.

``--split calibration`` searches the held-out 2018 calibration encounters among the
training images instead (the view a model's threshold was chosen on; use it, not 2019,
to choose between variants). ``--input-size HxW`` runs the model at another input size
than its config's (a fully convolutional backbone with global pooling accepts any).

Usage:
    python benchmarks/beluga.py --data ../shared/data/beluga               # shipped embedded model
    python benchmarks/beluga.py --model runs/beluga-model --kind features  # any model folder
    python benchmarks/beluga.py --split calibration --input-size 346x121 --name cal_346
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from beluga_data import prepare

from ecomarine import Identifier
from ecomarine.evaluation import evaluate_open_set, report_markdown
from ecomarine.training import read_catalog_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/beluga"))
    parser.add_argument("--splits", type=Path, default=Path("runs/beluga"))
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--kind", choices=["embedding", "features"], default="embedding")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="beluga")
    parser.add_argument("--split", choices=["2019", "calibration"], default="2019")
    parser.add_argument("--input-size", default=None, help="HxW (default: the model's)")
    args = parser.parse_args()
    prepare(args.data, args.splits)
    ident = Identifier.from_pretrained(args.model)
    if args.input_size:
        h, w = (int(x) for x in args.input_size.split("x"))
        pp = dataclasses.replace(ident.config.preprocess, input_size=(h, w))
        ident.config = ident.config.replace(preprocess=pp)
    gallery, queries = ("gallery", "queries") if args.split == "2019" else ("train", "calibration")
    started = time.perf_counter()
    report = evaluate_open_set(
        ident,
        read_catalog_csv(args.splits / f"{gallery}.csv", args.data),
        read_catalog_csv(args.splits / f"{queries}.csv", args.data),
        kind=args.kind,
    )
    seconds = time.perf_counter() - started
    command = f"python benchmarks/beluga.py --model {args.model} --kind {args.kind}"
    for flag, value, default in (
        ("--split", args.split, "2019"),
        ("--input-size", args.input_size, None),
        ("--name", args.name, "beluga"),
    ):
        if value != default:
            command += f" {flag} {value}"
    result = {
        "protocol": "beluga next-season (DESIGN.md)"
        if args.split == "2019"
        else "beluga calibration split: held-out 2018 encounters vs the training images",
        "command": command,
        "seconds": round(seconds, 1),
        **report.to_dict(),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (
        report_markdown(
            report,
            "Beluga next-season identification"
            if args.split == "2019"
            else "Beluga held-out 2018 encounters (calibration split)",
        )
        + f"\nProduced by `{command}` in {seconds:.0f} s.\n"
    )
    (args.results / f"{args.name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
