"""Robustness report: the gate and the identifier on degraded photos, each against clean.

Conditions (each applied to the photo before the library sees it, as a camera, a
messenger app or a bad exposure would): Gaussian noise (sigma 20 of 255), Gaussian blur
(radius 2), JPEG quality 30, brightness -40 % and +40 %, and a 0.5x downscale.

* Gate: TPR on cetaceans and TNR on everything else of the gate set and the look-alike
  set, with the shipped embedded gate at its shipped threshold. The head was fitted on
  most of these groups, so the clean figure is in-sample; what this measures is the drop.
* Identifier: beluga next-season protocol (DESIGN.md), the shipped embedded model. Closed
  set: the 2019 photos of whales catalogued in 2017-2018 (every ``--query-step``-th), each
  degraded query searched among the clean catalogue (the catalogue is curated; new photos
  are what arrive degraded); top-5 = the true whale among the five best-scoring
  individuals. Not the open-set top-5 of ``beluga.py`` (which also counts new whales).

All conditions run side by side in one run. Writes ``benchmarks/results/robustness.{json,md}``.

Usage: python benchmarks/robustness.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from ecomarine.gate import Gate
from ecomarine.search import individual_rows, rank_individuals_for_set

sys.path.insert(0, str(Path(__file__).resolve().parent))
from beluga_sightings import load_protocol

NOISE_SIGMA = 20.0


def _noise(img: Image.Image) -> Image.Image:
    rng = np.random.default_rng(0)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, NOISE_SIGMA, (img.height, img.width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _jpeg(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=30)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _downscale(img: Image.Image) -> Image.Image:
    return img.resize((max(1, img.width // 2), max(1, img.height // 2)), Image.Resampling.BILINEAR)


CONDITIONS: dict[str, Callable[[Image.Image], Image.Image] | None] = {
    "clean": None,
    "gaussian_noise_20": _noise,
    "blur_radius_2": lambda im: im.filter(ImageFilter.GaussianBlur(2)),
    "jpeg_quality_30": _jpeg,
    "brightness_-40%": lambda im: ImageEnhance.Brightness(im).enhance(0.6),
    "brightness_+40%": lambda im: ImageEnhance.Brightness(im).enhance(1.4),
    "downscale_0.5x": _downscale,
}


def degrade(paths: list[Path], fn: Callable[[Image.Image], Image.Image] | None) -> list[Any]:
    if fn is None:
        return list(paths)
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(fn(im.convert("RGB")))
    return out


def gate_part(data: Path) -> dict[str, Any]:
    gate = Gate.from_pretrained("embedded")
    paths, labels = [], []
    for root in (data / "gate", data / "gate" / "lookalikes"):
        with (root / "manifest.csv").open(newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                paths.append(root / r["relpath"])
                labels.append(r["label"] == "cetacean")
    y = np.array(labels)
    out = {}
    for name, fn in CONDITIONS.items():
        scores = np.array([r.score for r in gate.score(degrade(paths, fn))])
        out[name] = {
            "tpr": round(float(np.mean(scores[y] >= gate.threshold)), 4),
            "tnr": round(float(np.mean(scores[~y] < gate.threshold)), 4),
        }
        print("gate", name, out[name], flush=True)
    return {
        "threshold": gate.threshold,
        "n_positive": int(y.sum()),
        "n_negative": int((~y).sum()),
        **out,
    }


def identifier_part(data: Path, splits: Path, step: int) -> dict[str, Any]:
    split, ident, vec = load_protocol(data / "beluga", splits, "embedded")
    gallery = split["gallery"]
    names, rows = individual_rows([s.individual_id for s in gallery])
    known = set(names)
    g = np.stack([vec[s.image] for s in gallery]).astype(np.float32)
    queries = [s for s in split["queries"] if s.individual_id in known][::step]
    out: dict[str, Any] = {"n_queries": len(queries)}
    for name, fn in CONDITIONS.items():
        if fn is None:
            q = np.stack([vec[s.image] for s in queries]).astype(np.float32)
        else:
            q = ident.embed(degrade([s.path for s in queries], fn))
        hits = 0
        for s, v in zip(queries, q, strict=True):
            top = rank_individuals_for_set(g, rows, v[None], 5, aggregation="max")
            hits += s.individual_id in {names[h.individual] for h in top}
        out[name] = {"top5": round(hits / len(queries), 4)}
        print("identifier", name, out[name], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--splits", type=Path, default=Path("runs/beluga"))
    parser.add_argument("--query-step", type=int, default=2)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/robustness.json"))
    args = parser.parse_args()
    result = {
        "command": f"python benchmarks/robustness.py --data ../shared/data --query-step {args.query_step}",
        "gate": gate_part(args.data),
        "identifier": identifier_part(args.data, args.splits, args.query_step),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    gate, ident = result["gate"], result["identifier"]
    lines = [
        f"From `{result['command']}` (one run, all conditions side by side). Gate: shipped "
        f"embedded gate at {gate['threshold']:.3f} on the gate set and look-alikes together "
        f"({gate['n_positive']} cetacean, {gate['n_negative']} other photos; the clean figure "
        f"is largely in-sample). Identifier: beluga 2019 top-5 over {ident['n_queries']} "
        "photos of catalogued whales (closed set), degraded queries against the clean "
        "catalogue.",
        "",
        "| condition | gate TPR | gate TNR | identifier top-5 | top-5 change |",
        "| --- | --- | --- | --- | --- |",
    ]
    clean = ident["clean"]["top5"]
    for name in CONDITIONS:
        t5 = ident[name]["top5"]
        lines.append(
            f"| {name} | {gate[name]['tpr']:.3f} | {gate[name]['tnr']:.3f} | {t5:.3f} | "
            f"{(t5 - clean) / clean:+.1%} |"
        )
    args.results.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
