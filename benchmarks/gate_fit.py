"""Fit and measure the embedded gate's head on kinds of photo it was never fitted on.

Data: the gate set (``gate/manifest.csv``) and the marine look-alike set
(``gate/lookalikes/manifest.csv``) together, plus top-view beluga crops from ``beluga/``
that are *not* in the gate set and synthetic screenshots, text pages, blank images and
patterns made here. Never fitted: the Happywhale photos (CC-BY-NC, evaluation only) and the
gate set's own top-view belugas.

The head is a logistic regression over the ImageNet kinds of photo
(:mod:`ecomarine._imagenet_kinds`, lightly penalised) and the backbone's pooled features
(standardised, strongly penalised), on letterboxed 224 px inputs; each group carries the
same weight within its class, so that every negative kind is represented whatever its
photo count. The recipe (features, penalties, letterbox) was chosen among about a dozen
variants by these same held-out figures, which are therefore somewhat optimistic.

Every figure that decides the shipped gate comes from photos the head was not fitted on:

* leave-one-group-out (LOGO): for each group, refit without it and score it;
* leave-one-source-out (LOSO): the same per ``source`` (repository or photo set), since
  photos of one source are correlated (several crops come from one frame).

The threshold is chosen on the LOGO scores of the fitted groups (the one number fitted
to held-out scores: the largest smaller-of mean per-group TPR and mean per-group TNR),
then applied to the head fitted on everything, which ships. Writes
``src/ecomarine/weights/gate-embedded/`` and ``benchmarks/results/gate_fit.{json,md}``.

Usage: python benchmarks/gate_fit.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from ecomarine._gate_embedded import (
    FEATURES,
    EmbeddedBackend,
    fit_gate_head,
    fit_kind_head,
    head_features,
)
from ecomarine._imagenet_kinds import KIND_NAMES
from ecomarine.config import PreprocessConfig
from ecomarine.gate import EMBEDDED_GATE_DIR, Gate, GateConfig
from ecomarine.metrics import roc_auc
from ecomarine.transforms import load_batch

L2 = 0.02
#: The dozen kind features are penalised this much less than the 1,280 pooled ones: they
#: carry ImageNet's own knowledge of look-alikes, which should not be shrunk away.
KIND_PENALTY_RATIO = 0.01
FEATURE_KIND = "kinds_pooled"
NEVER_FIT = "never fitted"
#: What a rejected photo is said to look like: the looks-like head's kinds, by group.
LOOKS_LIKE = {
    "seal": "pinniped",
    "sea_lion_walrus_otter": "pinniped",
    "empty_sea_aerial": "empty_water",
    "empty_sea_surface": "empty_water",
    "scene:sea": "empty_water",
    "kelp_rock_shore": "rocks_or_shore",
    "scene:glacier": "landscape",
    "scene:mountain": "landscape",
    "scene:forest": "landscape",
    "scene:buildings": "buildings_or_street",
    "scene:street": "buildings_or_street",
    "boat": "boat",
    "seabird": "bird",
    "fish_underwater": "fish_or_reef",
    "shark": "shark",
    "person_in_water": "person",
    "synthetic": "screen_or_document",
}
KIND_LIST = tuple(sorted(set(LOOKS_LIKE.values())))


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


def backbone_outputs(
    backend: EmbeddedBackend, sources: list[Any], pp: PreprocessConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    pooled, logits = [], []
    for i in range(0, len(sources), 32):
        with torch.inference_mode():
            p, lg = backend.backbone_outputs(load_batch(sources[i : i + 32], pp, 2))
        pooled.append(p)
        logits.append(lg)
    return torch.cat(pooled), torch.cat(logits)


def read_rows(data: Path) -> list[dict[str, Any]]:
    """Every photo with its label, group, source, set and whether it may be fitted."""
    rows: list[dict[str, Any]] = []
    for root, name in ((data / "gate", "gate set"), (data / "gate" / "lookalikes", "look-alikes")):
        with (root / "manifest.csv").open(newline="", encoding="utf-8") as fh:
            for r in csv.DictReader(fh):
                group = r["group"]
                fit = not group.startswith("happywhale") and not (
                    name == "gate set" and group == "beluga_top"
                )
                rows.append(
                    {
                        "image": root / r["relpath"],
                        "label": r["label"] == "cetacean",
                        "group": group,
                        # A repository or photo set; the part before ":" names it.
                        "source": r["source"].split(":")[0],
                        "set": name,
                        "fit": fit,
                    }
                )
    in_set = {Path(r["image"]).name for r in rows if r["group"] == "beluga_top"}
    extra = [p for p in sorted((data / "beluga" / "images").glob("*.jpg")) if p.name not in in_set][
        ::20
    ]
    beluga_source = next(r["source"] for r in rows if r["group"] == "beluga_top")
    rows += [
        {
            "image": p,
            "label": True,
            "group": "beluga_top_extra",
            "source": beluga_source,
            "set": "extra",
            "fit": True,
        }
        for p in extra
    ]
    rows += [
        {
            "image": img,
            "label": False,
            "group": "synthetic",
            "source": "synthetic",
            "set": "extra",
            "fit": True,
        }
        for img in synthetic_negatives(120)
    ]
    return rows


def group_weights(labels: np.ndarray, groups: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each class half the loss, each group of a class an equal share of it."""
    w = np.zeros(len(labels))
    for c in (True, False):
        names = sorted(set(groups[mask & (labels == c)]))
        for g in names:
            m = mask & (labels == c) & (groups == g)
            w[m] = 0.5 / len(names) / m.sum()
    return w


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=EMBEDDED_GATE_DIR)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/gate_fit.json"))
    parser.add_argument("--l2", type=float, default=L2)
    parser.add_argument(
        "--plot", type=Path, default=Path("docs/img/gate_heldout.png"), help="needs matplotlib"
    )
    parser.add_argument(
        "--scores", type=Path, default=Path("runs/gate/scores.npz"), help="held-out scores"
    )
    args = parser.parse_args()
    args.scores.parent.mkdir(parents=True, exist_ok=True)
    rows = read_rows(args.data)
    labels = np.array([r["label"] for r in rows])
    groups = np.array([r["group"] for r in rows])
    sources = np.array([r["source"] for r in rows])
    sets = np.array([r["set"] for r in rows])
    fit_ok = np.array([r["fit"] for r in rows])
    pp = PreprocessConfig(input_size=(224, 224), resize="letterbox")
    pooled, logits = backbone_outputs(EmbeddedBackend(), [r["image"] for r in rows], pp)
    x = head_features(pooled, logits, FEATURE_KIND)
    standardize = torch.arange(FEATURES[FEATURE_KIND]) >= len(KIND_NAMES)  # the pooled part
    penalty = torch.where(standardize, args.l2, args.l2 * KIND_PENALTY_RATIO).double()

    def fitted(mask: np.ndarray) -> tuple[torch.Tensor, float]:
        w = torch.from_numpy(group_weights(labels, groups, mask)[mask])
        y = torch.from_numpy(labels[mask]).float()
        return fit_gate_head(x[mask], y, sample_weight=w, standardize=standardize, l2=penalty)

    def score(head: tuple[torch.Tensor, float], mask: np.ndarray) -> np.ndarray:
        w, b = head
        return torch.sigmoid(x[mask].double() @ w.double() + b).numpy()

    full_head = fitted(fit_ok)
    shipped = score(full_head, np.ones(len(rows), bool))
    held_out = {}
    for name, units in (("logo", groups), ("loso", sources)):
        s = shipped.copy()  # rows never fitted keep the full head's score (held out anyway)
        for u in sorted(set(units[fit_ok])):
            held = units == u
            s[held] = score(fitted(fit_ok & ~held), held)
        held_out[name] = s

    np.savez(
        args.scores,
        shipped=shipped,
        logo=held_out["logo"],
        loso=held_out["loso"],
        label=labels,
        group=groups,
        set=sets,
        fit=fit_ok,
    )
    thr = choose_threshold(held_out["logo"], labels, groups, fit_ok)

    # The looks-like head: which kind of non-cetacean photo, fitted on the negatives.
    kind_of = np.array([KIND_LIST.index(LOOKS_LIKE[g]) if g in LOOKS_LIKE else -1 for g in groups])
    has_kind = fit_ok & (kind_of >= 0)

    def fitted_kinds(mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.from_numpy(group_weights(labels, groups, mask)[mask])
        k = torch.from_numpy(kind_of[mask])
        return fit_kind_head(
            x[mask], k, len(KIND_LIST), sample_weight=w, standardize=standardize, l2=penalty
        )

    def said(head: tuple[torch.Tensor, torch.Tensor], mask: np.ndarray) -> np.ndarray:
        return (x[mask].float() @ head[0].T + head[1]).argmax(dim=1).numpy()

    kind_head = fitted_kinds(has_kind)
    kinds_cv = {"loso": np.full(len(rows), -1), "5fold": np.full(len(rows), -1)}
    for u in sorted(set(sources[has_kind])):
        held = has_kind & (sources == u)
        kinds_cv["loso"][held] = said(fitted_kinds(has_kind & ~held), held)
    fold = np.zeros(len(rows), int)
    for g in set(groups[has_kind]):  # every group spread over five folds
        idx = np.flatnonzero(has_kind & (groups == g))
        fold[idx] = np.arange(len(idx)) % 5
    for f in range(5):
        held = has_kind & (fold == f)
        kinds_cv["5fold"][held] = said(fitted_kinds(has_kind & ~held), held)
    looks_like_cv = {}
    for g in sorted(set(groups[has_kind])):
        m = has_kind & (groups == g)
        right = kind_of[m][0]
        kind_sources = set(sources[has_kind & (kind_of == right)])
        looks_like_cv[g] = {
            "kind": LOOKS_LIKE[g],
            "five_fold": round(float(np.mean(kinds_cv["5fold"][m] == right)), 4),
            # With one source for the whole kind, holding it out leaves nothing to learn from.
            "source_held_out": round(float(np.mean(kinds_cv["loso"][m] == right)), 4)
            if len(kind_sources) > 1
            else None,
        }

    config = GateConfig(
        backend="embedded",
        threshold=thr,
        preprocess=pp,
        features=FEATURE_KIND,
        looks_like_kinds=KIND_LIST,
    )
    gate = Gate(
        EmbeddedBackend(
            full_head[0], full_head[1], FEATURE_KIND, (kind_head[0], kind_head[1], KIND_LIST)
        ),
        config,
    )
    report = gate.calibrate(shipped[fit_ok & labels], shipped[fit_ok & ~labels], apply=False)
    gate.config = dataclasses.replace(config, calibration=report.to_dict())
    gate.save_pretrained(args.out)

    per_group = {}
    for g in sorted(set(groups)):
        m = groups == g
        label = bool(labels[m][0])
        entry: dict[str, Any] = {
            "set": str(sets[m][0]),
            "label": "cetacean" if label else "non_cetacean",
            "n": int(m.sum()),
            "fitted_in_shipped_head": bool(fit_ok[m][0]),
        }
        for name, s in (
            ("logo", held_out["logo"]),
            ("loso", held_out["loso"]),
            ("shipped", shipped),
        ):
            # Never fitted: every protocol is the shipped head.
            used = s if fit_ok[m][0] else shipped
            entry[f"{name}_accuracy"] = round(float(np.mean((used[m] >= thr) == label)), 4)
            entry[f"{name}_median_score"] = round(float(np.median(used[m])), 4)
        per_group[g] = entry

    def summary(s: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
        neg = {
            g: round(float(np.mean(s[mask & (groups == g)] < thr)), 4)
            for g in sorted(set(groups[mask & ~labels]))
        }
        big = {g: v for g, v in neg.items() if (mask & (groups == g)).sum() >= 15}
        return {
            "roc_auc": round(roc_auc(s[mask], labels[mask]), 4),
            "tpr": round(float(np.mean(s[mask & labels] >= thr)), 4),
            "tnr": round(float(np.mean(s[mask & ~labels] < thr)), 4),
            "tnr_per_negative_group": neg,
            "min_tnr_groups_15_or_more": min(big.values()) if big else None,
            "n_positive": int((mask & labels).sum()),
            "n_negative": int((mask & ~labels).sum()),
        }

    new = sets == "look-alikes"
    old = sets == "gate set"
    hw = np.char.startswith(groups.astype(str), "happywhale")
    result = {
        "command": "python benchmarks/gate_fit.py --data ../shared/data",
        "features": FEATURE_KIND,
        "l2": args.l2,
        "l2_kind_features": args.l2 * KIND_PENALTY_RATIO,
        "input": "224x224 letterbox",
        "threshold": thr,
        "threshold_rule": "max over t of min(mean per-group TPR, mean per-group TNR) on the "
        "leave-one-group-out scores of the fitted groups",
        "n_fit": int(fit_ok.sum()),
        "never_fitted": ["happywhale:* (CC-BY-NC)", "gate set beluga_top"],
        "lookalikes_leave_one_group_out": summary(held_out["logo"], new),
        "lookalikes_leave_one_source_out": summary(held_out["loso"], new),
        "lookalikes_shipped_head_in_sample": summary(shipped, new),
        "gate_set_happywhale_tpr_never_fitted": round(float(np.mean(shipped[hw] >= thr)), 4),
        "gate_set_shipped_head": summary(shipped, old),
        "gate_set_leave_one_group_out": summary(held_out["logo"], old),
        "gate_set_leave_one_source_out": summary(held_out["loso"], old),
        "per_group": per_group,
        "looks_like_accuracy": looks_like_cv,
        "fit_calibration_in_sample": report.to_dict(),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2) + "\n")
    args.results.with_suffix(".md").write_text(markdown(result))
    plot_held_out(held_out["logo"], shipped, labels, groups, fit_ok, thr, args.plot)
    print(json.dumps({k: v for k, v in result.items() if k != "per_group"}, indent=2))


def plot_held_out(
    logo: np.ndarray,
    shipped: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    fit_ok: np.ndarray,
    thr: float,
    path: Path,
) -> None:
    """Each group's held-out scores as dots, against the shipped threshold."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    names = sorted(set(groups), key=lambda g: (not labels[groups == g][0], g))
    fig, ax = plt.subplots(figsize=(7, 0.24 * len(names) + 1.2))
    rng = np.random.default_rng(0)
    for row, g in enumerate(names):
        m = groups == g
        s = logo[m] if fit_ok[m][0] else shipped[m]
        color = "tab:blue" if labels[m][0] else "tab:red"
        ax.scatter(s, row + rng.uniform(-0.25, 0.25, len(s)), s=6, color=color, alpha=0.6)
    ax.axvline(thr, color="black", lw=1, ls="--", label=f"shipped threshold {thr:.3f}")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(
        "gate score with the group left out of the fit (Happywhale and gate-set top views: "
        "never fitted)\nblue: cetacean, red: not",
        fontsize=8,
    )
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def choose_threshold(
    scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, fit_ok: np.ndarray
) -> float:
    """The threshold that maximises min(mean per-group TPR, mean per-group TNR)."""
    pos = [fit_ok & (groups == g) for g in sorted(set(groups[fit_ok & labels]))]
    neg = [fit_ok & (groups == g) for g in sorted(set(groups[fit_ok & ~labels]))]
    best, best_t = -1.0, 0.5
    for t in np.linspace(0.01, 0.99, 197):
        tpr = np.mean([np.mean(scores[m] >= t) for m in pos])
        tnr = np.mean([np.mean(scores[m] < t) for m in neg])
        if min(tpr, tnr) > best:
            best, best_t = float(min(tpr, tnr)), float(t)
    return best_t


def markdown(r: dict[str, Any]) -> str:
    def line(name: str, s: dict[str, Any]) -> str:
        low = s["min_tnr_groups_15_or_more"]
        return (
            f"| {name} | {s['roc_auc']:.3f} | {s['tpr']:.3f} | {s['tnr']:.3f} | "
            f"{'-' if low is None else f'{low:.3f}'} |"
        )

    out = [
        f"Embedded gate (`{r['features']}` head, {r['input']}), from `{r['command']}`; "
        f"shipped threshold {r['threshold']:.3f}, chosen on leave-one-group-out scores.",
        "",
        "| photos, protocol | ROC-AUC | TPR | TNR | min TNR (groups >= 15) |",
        "| --- | --- | --- | --- | --- |",
        line("look-alikes, leave-one-group-out", r["lookalikes_leave_one_group_out"]),
        line("look-alikes, leave-one-source-out", r["lookalikes_leave_one_source_out"]),
        line("look-alikes, shipped head (in-sample)", r["lookalikes_shipped_head_in_sample"]),
        line("gate set, leave-one-group-out", r["gate_set_leave_one_group_out"]),
        line("gate set, leave-one-source-out", r["gate_set_leave_one_source_out"]),
        line("gate set, shipped head (in-sample but Happywhale)", r["gate_set_shipped_head"]),
        "",
        f"Happywhale photos (never fitted), shipped head: TPR {r['gate_set_happywhale_tpr_never_fitted']:.3f}.",
        "",
        "Accuracy per group at the shipped threshold: held out by group (LOGO), by source "
        "(LOSO), and with the shipped head (in-sample for fitted groups; groups marked "
        "never fitted are held out in every column).",
        "",
        "| group | set | label | photos | LOGO | LOSO | shipped | LOGO median score |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for g, e in r["per_group"].items():
        shipped = f"{e['shipped_accuracy']:.3f}" + (
            "" if e["fitted_in_shipped_head"] else f" ({NEVER_FIT})"
        )
        out.append(
            f"| {g} | {e['set']} | {e['label']} | {e['n']} | {e['logo_accuracy']:.3f} | "
            f"{e['loso_accuracy']:.3f} | {shipped} | {e['logo_median_score']:.3f} |"
        )
    out += [
        "",
        "What a rejected photo is said to look like (`GateResult.looks_like`): accuracy of the "
        "looks-like head per group, by five-fold cross-validation (sources shared between "
        "folds: optimistic) and with each photo's source held out (shown where the kind has "
        "more than one source).",
        "",
        "| group | said to look like | five-fold | source held out |",
        "| --- | --- | --- | --- |",
    ]
    for g, e in r["looks_like_accuracy"].items():
        held = "-" if e["source_held_out"] is None else f"{e['source_held_out']:.3f}"
        out.append(f"| {g} | {e['kind']} | {e['five_fold']:.3f} | {held} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
