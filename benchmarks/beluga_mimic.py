"""The recipe-selection mimic (DESIGN.md): choose training recipes without looking at 2019.

Each recipe ("lever") is trained on the 2017 images of the training split only
(``beluga_train.py --mimic``), then every 2018 photo of the catalogue (train and
calibration splits) is searched among the 2017 photos: about 2,000 queries, the whales
not seen in 2017 to be answered ``new_individual``, a season apart as real use is. The
open-set threshold of each run is chosen on the 2017 photos alone (leave-encounter-out,
as ``ecomarine gallery calibrate`` does), so no 2018 answer is used to score a run.

Two seeds per lever; the table gives each seed, the mean and the spread (max - min).
Trained levers (``list`` prints their training arguments): sub-center ArcFace with
count-dependent margins, batches whose positives come from different encounters, GeM
over the last two stages, whales seen in one encounter kept out of the ArcFace head (as
negatives), flip-augmented training, EfficientNet-Lite2 at 384x128 (extra ``lite2``).
Every trained lever is also reported with the flip TTA (``LEVER+flip-tta``).
Post-hoc levers (no retraining) run on the baseline's models:

* ``flip-tta``: each photo's vector averaged with its horizontally flipped view's (a top
  view's left and right markings swap under the flip: measured, not assumed);
* ``qe-catalogue``: alpha query expansion, the query's two best catalogue photos added to
  it (weights cos^3) before searching again;
* ``qe-season``: the competition winner's within-season trick: the query's two nearest
  *other photos of the same season* (unlabelled queries) added to it.

Usage:
    python benchmarks/beluga_mimic.py train baseline --seed 0     # runs/mimic/baseline-s0
    python benchmarks/beluga_mimic.py train subcenter-dynamic --seed 1
    python benchmarks/beluga_mimic.py evaluate                    # every run found
    python benchmarks/beluga_mimic.py list                        # the levers and their args

Writes ``benchmarks/results/beluga_mimic.{json,md}``. About 25 CPU minutes per training
on 2 cores (16 epochs, 1,224 photos) and 2 minutes per run to evaluate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from beluga_data import prepare
from beluga_posthoc import l2

from ecomarine import Identifier
from ecomarine.calibration import calibrate_open_set
from ecomarine.catalog import Sample, read_catalog_csv
from ecomarine.metrics import (
    NEW_INDIVIDUAL,
    insert_new_individual,
    known_top_k_accuracy,
    map_at_k,
    roc_auc,
)
from ecomarine.search import rank_labelled
from ecomarine.transforms import default_workers, load_batch

Arr = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Lever:
    """One recipe change: training arguments, or a post-hoc change on the baseline's runs."""

    help: str
    train_args: tuple[str, ...] = ()
    posthoc: str | None = None  # name of a function of POSTHOC; trains nothing


LEVERS: dict[str, Lever] = {
    "baseline": Lever("the shipped recipe (beluga_train.py defaults)"),
    "subcenter-dynamic": Lever(
        "sub-center ArcFace (k=3) with count-dependent margins",
        ("--head", "subcenter", "--dynamic-margin"),
    ),
    "encounter-positives": Lever(
        "batches of 8 whales x 4 photos, each whale's photos from different encounters",
        ("--sampler", "encounter", "--images-per-id", "4"),
    ),
    "gem2": Lever(
        "GeM over the final feature map and the stride-16 stage's, concatenated",
        ("--pooling", "gem2"),
    ),
    "single-encounter-negatives": Lever(
        "whales seen in one encounter out of the ArcFace head, trained as negatives",
        ("--head-min-encounters", "2"),
    ),
    "lite2-384": Lever(
        "EfficientNet-Lite2 (ImageNet, extra lite2) at 384x128 input",
        ("--backbone", "embedded-lite2", "--input-size", "384x128"),
    ),
    "flip-train": Lever(
        "random horizontal flips in training (same whale); evaluated with and without TTA",
        ("--hflip",),
    ),
    "flip-tta": Lever("mean of the photo's and its mirror image's vectors", posthoc="flip"),
    "qe-catalogue": Lever("query + its two best catalogue photos (cos^3)", posthoc="qe"),
    "qe-season": Lever(
        "query + its two nearest other photos of the season (cos^3)", posthoc="season"
    ),
}


def embed(ident: Identifier, samples: Sequence[Sample]) -> tuple[Arr, Arr]:
    """Vectors of the photos and of their mirror images, each photo decoded once."""
    plain, mirrored = [], []
    pp = ident.config.preprocess
    for start in range(0, len(samples), 64):
        batch = load_batch([s.path for s in samples[start : start + 64]], pp, default_workers())
        plain.append(ident.embed_tensor(batch).cpu().numpy())
        mirrored.append(ident.embed_tensor(torch.flip(batch, dims=[3])).cpu().numpy())
    return np.concatenate(plain).astype(np.float32), np.concatenate(mirrored).astype(np.float32)


def expand(queries: Arr, pool: Arr, *, skip_self: bool, n: int = 2, alpha: float = 3.0) -> Arr:
    """Alpha query expansion: each query plus its ``n`` nearest rows of ``pool``."""
    sims = queries @ pool.T
    if skip_self:
        np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :n]
    w = np.maximum(np.take_along_axis(sims, top, axis=1), 0.0) ** alpha
    return l2(queries + np.einsum("qn,qnd->qd", w, pool[top])).astype(np.float32)


def figures(
    gallery: Arr, queries: Arr, g_samples: Sequence[Sample], q_samples: Sequence[Sample]
) -> dict[str, Any]:
    """Top-1/top-5 of known queries, MAP@5 with the gallery-only threshold, ROC-AUC."""
    g_ids = [s.individual_id for s in g_samples]
    groups = [s.encounter or s.image for s in g_samples]
    threshold = calibrate_open_set(
        gallery, g_ids, gallery, g_ids, gallery_groups=groups, query_groups=groups
    ).threshold
    cands, truths = rank_labelled(gallery, g_ids, queries, [s.individual_id for s in q_samples])
    best = np.array([c[0].score if c else -1.0 for c in cands])
    is_new = np.array([t == NEW_INDIVIDUAL for t in truths])
    return {
        "top1": known_top_k_accuracy(cands, truths, 1),
        "top5": known_top_k_accuracy(cands, truths, 5),
        "map5": map_at_k([insert_new_individual(c, threshold) for c in cands], truths, 5),
        "auc": roc_auc(-best, is_new),
        "threshold": threshold,
        "n": len(truths),
        "n_known": int((~is_new).sum()),
    }


def posthoc_views(
    ident: Identifier, past: Sequence[Sample], present: Sequence[Sample], cache: Path
) -> dict[str, tuple[Arr, Arr]]:
    """(gallery, query) vectors for the plain run and every post-hoc lever, cached."""
    if cache.is_file():
        data = np.load(cache)
        g, q, gf, qf = data["g"], data["q"], data["gf"], data["qf"]
    else:
        (g, gf), (q, qf) = embed(ident, past), embed(ident, present)
        np.savez(cache, g=g, q=q, gf=gf, qf=qf)
    return {
        "plain": (g, q),
        "flip": (l2(g + gf), l2(q + qf)),
        "qe": (g, expand(q, g, skip_self=False)),
        "season": (g, expand(q, q, skip_self=True)),
    }


def run_folders(root: Path) -> dict[str, list[Path]]:
    """Trained runs by lever: ``root/<lever>-s<seed>`` folders with a model in them."""
    out: dict[str, list[Path]] = {}
    for folder in sorted(root.glob("*-s*")):
        lever = folder.name.rsplit("-s", 1)[0]
        if lever in LEVERS and (folder / "model.safetensors").is_file():
            out.setdefault(lever, []).append(folder)
    return out


def evaluate(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    prepare(args.data, args.splits)
    past_all = read_catalog_csv(args.splits / "gallery.csv", args.data)
    past = [s for s in past_all if (s.date or "").startswith("2017")]
    present = [s for s in past_all if (s.date or "").startswith("2018")]
    rows: dict[str, dict[str, Any]] = {}
    for lever, folders in run_folders(args.runs).items():
        for folder in folders:
            ident = Identifier.from_pretrained(folder)
            cache = args.runs / f"vectors-{ident.fingerprint('embedding')}.npz"
            views = posthoc_views(ident, past, present, cache)
            seed = folder.name.rsplit("-s", 1)[1]
            rows.setdefault(lever, {})[seed] = figures(*views["plain"], past, present)
            if lever != "baseline":
                # Every trained lever also with the flip TTA (does it add to the lever?).
                tta = figures(*views["flip"], past, present)
                rows.setdefault(f"{lever}+flip-tta", {})[seed] = tta
                continue
            for name, spec in LEVERS.items():
                if spec.posthoc is not None:
                    fig = figures(*views[spec.posthoc], past, present)
                    rows.setdefault(name, {})[seed] = fig
    result = {
        "protocol": "mimic (DESIGN.md): trained on 2017 only; 2018 photos searched among "
        "2017 photos; threshold leave-encounter-out on the 2017 photos",
        "command": "python benchmarks/beluga_mimic.py evaluate",
        "levers": {
            k: {"help": v.help, "train_args": list(v.train_args)} for k, v in LEVERS.items()
        },
        "runs": rows,
        "summary": {lever: summary(seeds) for lever, seeds in rows.items()},
        "not_measured": [k for k in LEVERS if k not in rows],
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "beluga_mimic.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (args.results / "beluga_mimic.md").write_text(md)
    print(md)


def summary(seeds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": len(seeds)}
    for key in ("top1", "top5", "map5", "auc"):
        values = [s[key] for s in seeds.values()]
        out[key] = float(np.mean(values))
        out[f"{key}_spread"] = float(max(values) - min(values))
    return out


def markdown(r: dict[str, Any]) -> str:
    base = r["summary"].get("baseline")
    lines = [
        "## Beluga recipe-selection mimic",
        "",
        "Trained on 2017 only; every 2018 photo searched among the 2017 photos "
        f"({_first(r, 'n')} queries, {_first(r, 'n_known')} of whales seen in 2017); the "
        "threshold of each run chosen on the 2017 photos alone (leave-encounter-out). Mean "
        "over seeds, spread (max - min) in brackets; delta = mean minus the baseline's mean.",
        "",
        "| lever | seeds | top-1 | top-5 | MAP@5 | new-individual AUC | delta top-1 / top-5 |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for lever, s in r["summary"].items():
        delta = (
            f"{s['top1'] - base['top1']:+.3f} / {s['top5'] - base['top5']:+.3f}"
            if base and lever != "baseline"
            else "-"
        )
        lines.append(
            f"| {lever} | {s['seeds']} | {s['top1']:.3f} ({s['top1_spread']:.3f}) | "
            f"{s['top5']:.3f} ({s['top5_spread']:.3f}) | {s['map5']:.3f} ({s['map5_spread']:.3f})"
            f" | {s['auc']:.3f} ({s['auc_spread']:.3f}) | {delta} |"
        )
    lines += ["", "Levers:", ""]
    for name, lever in r["levers"].items():
        how = " ".join(lever["train_args"]) or "-"
        lines.append(f"- `{name}`: {LEVERS[name].help} (training arguments: `{how}`)")
    if r["not_measured"]:
        lines += ["", "Not measured yet: " + ", ".join(f"`{k}`" for k in r["not_measured"])]
    lines += ["", f"Produced by `{r['command']}` in {r['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def _first(r: dict[str, Any], key: str) -> str:
    for seeds in r["runs"].values():
        for fig in seeds.values():
            return str(fig[key])
    return "?"


def train(args: argparse.Namespace) -> None:
    lever = LEVERS[args.lever]
    if lever.posthoc is not None:
        sys.exit(f"{args.lever} trains nothing: it runs on the baseline's models")
    out = args.runs / f"{args.lever}-s{args.seed}"
    cmd = [
        sys.executable,
        str(Path(__file__).with_name("beluga_train.py")),
        "--data",
        str(args.data),
        "--splits",
        str(args.splits),
        "--mimic",
        "--seed",
        str(args.seed),
        "--out",
        str(out),
        *lever.train_args,
    ]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data/beluga"))
    parser.add_argument("--splits", type=Path, default=Path("runs/beluga"))
    parser.add_argument("--runs", type=Path, default=Path("runs/mimic"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one lever with one seed")
    t.add_argument("lever", choices=sorted(LEVERS))
    t.add_argument("--seed", type=int, default=0)
    sub.add_parser("evaluate", help="evaluate every trained run")
    sub.add_parser("list", help="the levers")
    args = parser.parse_args()
    commands: dict[str, Callable[[argparse.Namespace], None]] = {
        "train": train,
        "evaluate": evaluate,
        "list": lambda _a: print(
            "\n".join(f"{k}: {v.help} {' '.join(v.train_args)}" for k, v in LEVERS.items())
        ),
    }
    commands[args.command](args)


if __name__ == "__main__":
    main()
