"""Fit and measure the embedded gate's logistic head; write the shipped gate.

Positives: the gate manifest's dolphins and lateral belugas, plus top-view beluga crops
from ``beluga/`` that are *not* in the manifest. Negatives: the manifest's sharks and
scenes, plus synthetic screenshots, text pages, blank images and abstract patterns made
here. Never fitted on: the Happywhale photos (CC-BY-NC, evaluation only) and the
manifest's own top-view belugas -- both are entirely held out.

Also reports leave-one-group-out figures: for each fitted group, refit without it and
score that group against the opposite class, since photos of unseen kinds are the real
case. Writes ``src/ecomarine/weights/gate-embedded/`` and ``benchmarks/results/gate_fit.json``.

Usage: python benchmarks/gate_fit.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ecomarine._gate_embedded import EmbeddedBackend, fit_logistic_head
from ecomarine.config import PreprocessConfig
from ecomarine.gate import EMBEDDED_GATE_DIR, Gate, GateConfig
from ecomarine.metrics import roc_auc
from ecomarine.transforms import load_batch

L2 = 1e-3


def synthetic_negatives(n: int, seed: int = 0) -> list[Image.Image]:
    """Screenshots, text pages, blank images and abstract patterns."""
    rng = np.random.default_rng(seed)
    words = [
        "the",
        "survey",
        "data",
        "table",
        "report",
        "figure",
        "page",
        "section",
        "whale",
        "boat",
        "result",
        "total",
    ]
    out = []
    for i in range(n):
        kind = i % 4
        w, h = int(rng.integers(320, 900)), int(rng.integers(240, 700))
        if kind == 0:  # text page
            img = Image.new("RGB", (w, h), (255, 255, 255))
            d = ImageDraw.Draw(img)
            for y in range(10, h - 10, int(rng.integers(12, 24))):
                d.text((10, y), " ".join(rng.choice(words, 8)), fill=(0, 0, 0))
        elif kind == 1:  # screenshot-like UI
            bg = tuple(int(c) for c in rng.integers(200, 256, 3))
            img = Image.new("RGB", (w, h), bg)
            d = ImageDraw.Draw(img)
            d.rectangle([0, 0, w, 30], fill=tuple(int(c) for c in rng.integers(0, 120, 3)))
            for _ in range(8):
                x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(35, h - 20))
                d.rectangle(
                    [x0, y0, x0 + int(rng.integers(30, 200)), y0 + 18], outline=(90, 90, 90)
                )
                d.text((x0 + 3, y0 + 3), str(rng.choice(words)), fill=(20, 20, 20))
        elif kind == 2:  # blank or gradient
            base = rng.integers(0, 256, 3)
            ramp = np.linspace(0, rng.integers(0, 80), w)[None, :, None]
            arr = np.clip(base[None, None, :] + ramp, 0, 255).repeat(h, 0)
            img = Image.fromarray(arr.astype(np.uint8))
        else:  # abstract pattern
            arr = rng.integers(0, 256, (h // 8, w // 8, 3)).astype(np.uint8)
            img = Image.fromarray(arr).resize((w, h), Image.Resampling.NEAREST)
        out.append(img)
    return out


def log_probs(backend: EmbeddedBackend, sources: list, pp) -> torch.Tensor:  # type: ignore[no-untyped-def]
    chunks = []
    for i in range(0, len(sources), 32):
        with torch.inference_mode():
            chunks.append(backend.log_probs(load_batch(sources[i : i + 32], pp, 2)))
    return torch.cat(chunks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=EMBEDDED_GATE_DIR)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/gate_fit.json"))
    parser.add_argument("--input-size", type=int, default=224, help="square gate input side")
    args = parser.parse_args()
    gate_root = args.data / "gate"
    with (gate_root / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    in_manifest = {Path(r["relpath"]).name for r in rows if r["group"] == "beluga_top"}
    extra = [
        p
        for p in sorted((args.data / "beluga" / "images").glob("*.jpg"))
        if p.name not in in_manifest
    ][::20]
    synth = synthetic_negatives(120)
    sources = [gate_root / r["relpath"] for r in rows] + extra + synth
    groups = np.array(
        [r["group"].split(":")[0] for r in rows]
        + ["beluga_top_extra"] * len(extra)
        + ["synthetic"] * len(synth)
    )
    groups = np.where(np.char.startswith(groups, "scene"), "scenes", groups)
    labels = np.array(
        [r["label"] == "cetacean" for r in rows] + [True] * len(extra) + [False] * len(synth)
    )
    manifest = np.arange(len(groups)) < len(rows)
    backend = EmbeddedBackend()
    pp = PreprocessConfig(input_size=(args.input_size, args.input_size))
    lp = log_probs(backend, sources, pp)
    fit_groups = ["dolphin", "beluga_lateral", "beluga_top_extra", "shark", "scenes", "synthetic"]
    fit_mask = np.isin(groups, fit_groups)

    def scores_for(mask: np.ndarray) -> np.ndarray:
        w, b = fit_logistic_head(lp[mask], torch.from_numpy(labels[mask]).float(), l2=L2)
        head = EmbeddedBackend.__new__(EmbeddedBackend)
        torch.nn.Module.__init__(head)
        head.head = torch.nn.Linear(1000, 1)
        with torch.no_grad():
            head.head.weight.copy_(w.view(1, -1))
            head.head.bias.fill_(b)
        return head.scores_from_log_probs(lp).detach().numpy()

    logo = {}
    for g in fit_groups:
        held = groups == g
        s = scores_for(fit_mask & ~held)
        opposite = manifest & (labels != labels[held][0]) & ~held
        if g == "beluga_top_extra":  # judge on the manifest's own (never fitted) top views
            held = manifest & (groups == "beluga_top")
        ev = held | opposite
        logo[g] = round(roc_auc(s[ev], labels[ev]), 4)
    w, b = fit_logistic_head(lp[fit_mask], torch.from_numpy(labels[fit_mask]).float(), l2=L2)
    gate = Gate(EmbeddedBackend(w, b), GateConfig(backend="embedded", threshold=0.5, preprocess=pp))
    scores = gate.backend.scores_from_log_probs(lp).detach().numpy()  # type: ignore[attr-defined]

    # The threshold is set on the fitting rows only (no Happywhale, no manifest top views):
    # the middle, in logit space, of the gap between the 1st percentile of positive scores
    # and the 99th percentile of negative ones, so that unseen kinds get equal slack.
    def logit(p: float) -> float:
        p = min(max(p, 1e-6), 1 - 1e-6)
        return float(np.log(p / (1 - p)))

    lo = logit(float(np.percentile(scores[fit_mask & ~labels], 99)))
    hi = logit(float(np.percentile(scores[fit_mask & labels], 1)))
    threshold = float(1 / (1 + np.exp(-(lo + hi) / 2)))
    report = gate.calibrate(scores[fit_mask & labels], scores[fit_mask & ~labels], apply=False)
    gate.config = GateConfig(
        backend="embedded", threshold=threshold, preprocess=pp, calibration=report.to_dict()
    )
    at_thr = {
        g: round(
            float(
                np.mean(
                    (scores[manifest & (groups == g)] >= threshold)
                    == labels[manifest & (groups == g)]
                )
            ),
            4,
        )
        for g in sorted(set(groups[manifest]))
    }
    gate.save_pretrained(args.out)
    result = {
        "l2": L2,
        "n_fit": int(fit_mask.sum()),
        "fit_groups": fit_groups,
        "threshold": threshold,
        "manifest_accuracy_per_group_at_threshold": at_thr,
        "fit_calibration": report.to_dict(),
        "leave_one_group_out_roc_auc": logo,
        "manifest_roc_auc_fitted_head": roc_auc(scores[manifest], labels[manifest]),
        "input_size": args.input_size,
        "command": f"python benchmarks/gate_fit.py --data ../shared/data --input-size {args.input_size}",
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "Leave-one-group-out ROC-AUC of the embedded gate's head (refit without the group, then "
        "that group scored against the opposite class of the gate set), from "
        f"`{result['command']}`:",
        "",
        "| held-out group | ROC-AUC |",
        "| --- | --- |",
        *[f"| {g} | {v:.3f} |" for g, v in logo.items()],
        "",
        "The Happywhale photos and the gate set's own top-view belugas are never fitted on.",
    ]
    args.results.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
