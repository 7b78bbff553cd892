"""Post-hoc variants of the beluga benchmark: changes that need no retraining.

Each variant changes how a trained model's vectors are compared (how an individual's
images are aggregated, a re-scaling of similarities, test-time crops, other models'
vectors beside them). For each one the open-set threshold is chosen again the way the
shipped one was (held-out 2018 encounters searched among the training images, never
2019), then the variant runs the next-season protocol of DESIGN.md. The calibration
columns are what a choice between variants may look at; the 2019 columns are reported.

Variants:
    max: best image per individual (what galleries do by default; the baseline).
    mean: the individual's mean vector (``Gallery(aggregation="mean")``).
    top2 / top3: mean of the individual's two / three best images.
    centred: the gallery's mean vector subtracted from every vector, then re-normalised.
    csls: 2 cos - r_query - r_image (cross-domain similarity local scaling, K=10;
        r_image is the mean of an image's 10 best cosines to other individuals' images).
    +features: the general pooled features appended to the embedding (weight 0.5).
    crop 1.08: the centre crop of the image resized 8 % larger (the training crops' scale).
    5 crops + full: mean of that centre crop, its four corner crops and the plain image.
    +MODEL: the vectors of another model folder appended (an ensemble, one pass each).

Writes ``benchmarks/results/beluga_posthoc.json`` and ``.md``. About 2 minutes without
``--tta`` on a 2-core CPU, 15 minutes with it.

Usage:
    python benchmarks/beluga_posthoc.py                       # the shipped embedded model
    python benchmarks/beluga_posthoc.py --tta --with runs/ens01
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from beluga_data import prepare

from ecomarine import Identifier
from ecomarine.calibration import choose_new_individual_threshold
from ecomarine.metrics import (
    NEW_INDIVIDUAL,
    insert_new_individual,
    known_top_k_accuracy,
    map_at_k,
    roc_auc,
)
from ecomarine.training import read_catalog_csv
from ecomarine.transforms import default_workers, load_batch
from ecomarine.types import Match

Arr = np.ndarray[Any, Any]
Scorer = Callable[[Arr, Arr, Arr], Arr]  # (queries, gallery, gallery ids) -> (Q, G) scores


def l2(x: Arr) -> Arr:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def embed_all(ident: Identifier, paths: Sequence[Path], tta: bool) -> dict[str, Arr]:
    """Both kinds of the plain view; with ``tta`` also the 1.08x centre and corner crops."""
    out: dict[str, Arr] = dict(ident.embed_kinds(paths, batch_size=64))
    if not tta:
        return out
    h, w = ident.config.preprocess.input_size
    big = dataclasses.replace(
        ident.config.preprocess, input_size=(round(h * 1.08), round(w * 1.08))
    )
    dy, dx = big.input_size[0] - h, big.input_size[1] - w
    offsets = {"c": (dy // 2, dx // 2), "tl": (0, 0), "tr": (0, dx), "bl": (dy, 0), "br": (dy, dx)}
    crops: dict[str, list[Arr]] = {k: [] for k in offsets}
    for start in range(0, len(paths), 64):
        batch = load_batch(paths[start : start + 64], big, default_workers(), ident.device)
        for name, (oy, ox) in offsets.items():
            view = batch[:, :, oy : oy + h, ox : ox + w].contiguous()
            crops[name].append(ident.embed_tensor(view).cpu().numpy())
    for name, parts in crops.items():
        out[f"crop_{name}"] = np.concatenate(parts)
    return out


def individual_scores(scores: Arr, gallery_ids: Arr, agg: str) -> tuple[Arr, Arr]:
    """(Q, G) image scores -> individual names and (Q, I) individual scores."""
    names, rows = np.unique(gallery_ids, return_inverse=True)
    order = np.argsort(rows, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(rows[order]) != 0])
    s = scores[:, order]
    if agg == "max":
        return names, np.maximum.reduceat(s, starts, axis=1)
    if agg == "mean":
        return names, np.add.reduceat(s, starts, axis=1) / np.diff(np.r_[starts, s.shape[1]])
    k = int(agg[3:])  # "topK"
    out = np.empty((s.shape[0], len(names)), np.float32)
    for j, (a, b) in enumerate(zip(starts, np.r_[starts[1:], s.shape[1]], strict=True)):
        block = -np.sort(-s[:, a:b], axis=1)
        out[:, j] = block[:, :k].mean(axis=1)
    return names, out


def candidates(names: Arr, scores: Arr, k: int = 5) -> list[list[Match]]:
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [
        [Match(str(names[j]), float(row[j])) for j in idx]
        for row, idx in zip(scores, top, strict=True)
    ]


def cosine(q: Arr, g: Arr, _ids: Arr) -> Arr:
    return q @ g.T


def csls(q: Arr, g: Arr, ids: Arr, k: int = 10) -> Arr:
    gg = g @ g.T
    gg[ids[:, None] == ids[None, :]] = -np.inf  # an image's hubness among other individuals
    r_image = np.sort(gg, axis=1)[:, -k:].mean(axis=1)
    s = q @ g.T
    r_query = np.sort(s, axis=1)[:, -k:].mean(axis=1)
    return 2 * s - r_query[:, None] - r_image[None, :]


def centred(q: Arr, g: Arr, _ids: Arr) -> Arr:
    mu = g.mean(axis=0)
    return l2(q - mu) @ l2(g - mu).T


def evaluate(
    vectors: Arr, split: dict[str, Arr], scorer: Scorer = cosine, agg: str = "max"
) -> dict[str, Any]:
    """Threshold from the calibration view, then the 2019 figures."""
    out: dict[str, Any] = {}
    threshold = 0.0
    for view, (gal, qry) in {
        "cal": ("train", "calibration"),
        "2019": ("gallery", "queries"),
    }.items():
        g_idx, q_idx = split[gal], split[qry]
        g_ids = split["ids"][g_idx]
        names, scores = individual_scores(scorer(vectors[q_idx], vectors[g_idx], g_ids), g_ids, agg)
        cands = candidates(names, scores)
        known = set(names.tolist())
        truths = [t if t in known else NEW_INDIVIDUAL for t in split["ids"][q_idx].tolist()]
        best = np.array([c[0].score for c in cands])
        is_new = np.array([t == NEW_INDIVIDUAL for t in truths])
        if view == "cal":
            threshold = choose_new_individual_threshold(cands, truths).threshold
        out[view] = {
            "top1": known_top_k_accuracy(cands, truths, 1),
            "top5": known_top_k_accuracy(cands, truths, 5),
            "roc_auc": roc_auc(-best, is_new),
            "map5": map_at_k([insert_new_individual(c, threshold) for c in cands], truths),
        }
    out["threshold"] = threshold
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/beluga"))
    parser.add_argument("--splits", type=Path, default=Path("runs/beluga"))
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--with", dest="others", nargs="*", default=[], help="model folders")
    parser.add_argument("--tta", action="store_true", help="also the crop variants (6 passes)")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="beluga_posthoc")
    args = parser.parse_args()
    prepare(args.data, args.splits)
    started = time.perf_counter()
    parts = {
        n: read_catalog_csv(args.splits / f"{n}.csv", args.data) for n in ("gallery", "queries")
    }
    samples = parts["gallery"] + parts["queries"]
    index = {s.image: i for i, s in enumerate(samples)}
    split = {"ids": np.array([s.individual_id for s in samples])}
    for n in ("gallery", "queries", "train", "calibration"):
        rows = parts[n] if n in parts else read_catalog_csv(args.splits / f"{n}.csv", args.data)
        split[n] = np.array([index[s.image] for s in rows])
    paths = [s.path for s in samples]
    vec = embed_all(Identifier.from_pretrained(args.model), paths, args.tta)
    emb = vec["embedding"]
    variants: dict[str, dict[str, Any]] = {}
    for agg in ("max", "mean", "top2", "top3"):
        variants[agg] = evaluate(emb, split, agg=agg)
    variants["centred"] = evaluate(emb, split, centred)
    variants["csls"] = evaluate(emb, split, csls)
    variants["+features"] = evaluate(l2(np.concatenate([emb, 0.5 * vec["features"]], 1)), split)
    if args.tta:
        variants["crop 1.08"] = evaluate(vec["crop_c"], split)
        views = [emb] + [vec[f"crop_{k}"] for k in ("c", "tl", "tr", "bl", "br")]
        variants["5 crops + full"] = evaluate(l2(sum(views)), split)
    for other in args.others:
        ident = Identifier.from_pretrained(other)
        extra = ident.embed_kinds(paths, kinds=("embedding",), batch_size=64)["embedding"]
        # An ensemble's vector has unit norm overall: scale it so each member weighs one.
        both = np.concatenate([emb, extra * np.sqrt(ident.config.members)], 1)
        variants[f"+{other}"] = evaluate(l2(both), split)
    seconds = time.perf_counter() - started
    command = f"python benchmarks/beluga_posthoc.py --model {args.model}"
    command += " --tta" * args.tta + "".join(f" --with {o}" for o in args.others)
    result = {"command": command, "seconds": round(seconds, 1), "variants": variants}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "## Beluga: post-hoc variants (no retraining)",
        "",
        "Threshold chosen on the held-out 2018 encounters (cal) for each variant; 2019 is the"
        " next-season protocol.",
        "",
        "| variant | cal top-1 | cal top-5 | cal AUC | threshold | 2019 MAP@5 | 2019 top-1 |"
        " 2019 top-5 | 2019 AUC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, v in variants.items():
        c, n = v["cal"], v["2019"]
        lines.append(
            f"| {name} | {c['top1']:.3f} | {c['top5']:.3f} | {c['roc_auc']:.3f} |"
            f" {v['threshold']:.3f} | {n['map5']:.3f} | {n['top1']:.3f} | {n['top5']:.3f} |"
            f" {n['roc_auc']:.3f} |"
        )
    lines += ["", f"Produced by `{command}` in {seconds:.0f} s.", ""]
    (args.results / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
