"""``ecomarine gate score|calibrate|evaluate``."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import click
import numpy as np

from .._atomic import atomic_write_text
from ._app import cli
from ._common import (
    FiniteFloatRange,
    expand_inputs,
    fmt,
    overwrite_option,
    progress,
    refuse_existing,
    table,
)


@cli.group()
def gate() -> None:
    """Score, calibrate and evaluate the cetacean gate."""


def _load(name: str) -> Any:
    from ..gate import Gate  # noqa: PLC0415

    if name == "clip":
        from ..gate import clip_gate  # noqa: PLC0415

        return clip_gate()
    return Gate.from_pretrained(name)


def _scores(g: Any, paths: list[Path], batch_size: int) -> np.ndarray[Any, Any]:
    out: list[float] = []
    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    for chunk in progress(chunks, len(chunks), "scoring"):
        out += [r.score for r in g.score(chunk, batch_size=batch_size)]
    return np.asarray(out, dtype=np.float64)


@gate.command("score")
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--gate",
    "gate_name",
    default="embedded",
    show_default=True,
    help='"embedded", "clip", a folder or a repo.',
)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
def score(paths: tuple[str, ...], gate_name: str, batch_size: int) -> None:
    """Score photos: is each one a cetacean photo?"""
    g = _load(gate_name)
    files = expand_inputs(paths)
    results = g.score(files, batch_size=batch_size)
    click.echo(
        table(
            [
                (f.name, fmt(r.score), "yes" if r.is_cetacean else "no", r.looks_like or "")
                for f, r in zip(files, results, strict=True)
            ],
            ["photo", "score", "cetacean", "looks like"],
        )
    )
    click.echo(f"\nthreshold {g.threshold:.3f} ({g.name} gate)")


@gate.command("calibrate")
@click.option(
    "--manifest", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--gate", "gate_name", default="embedded", show_default=True)
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="Save the calibrated gate here."
)
@click.option("--min-tpr", default=0.85, show_default=True, type=FiniteFloatRange(0, 1))
@click.option("--min-tnr", default=0.90, show_default=True, type=FiniteFloatRange(0, 1))
@click.option(
    "--roc-plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Save a ROC curve (needs matplotlib).",
)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@overwrite_option
def calibrate(
    manifest: Path,
    gate_name: str,
    out: Path | None,
    min_tpr: float,
    min_tnr: float,
    roc_plot: Path | None,
    batch_size: int,
    overwrite: bool,
) -> None:
    """Choose the gate's threshold from a labelled manifest."""
    from ..manifest import read_gate_manifest  # noqa: PLC0415

    refuse_existing([out, roc_plot], overwrite)
    entries = read_gate_manifest(manifest)
    g = _load(gate_name)
    scores = _scores(g, [e.path for e in entries], batch_size)
    labels = np.array([e.is_cetacean for e in entries])
    report = g.calibrate(scores[labels], scores[~labels], min_tpr=min_tpr, min_tnr=min_tnr)
    click.echo(
        table(
            [(k, fmt(v) if isinstance(v, float) else v) for k, v in report.to_dict().items()],
            ["", "value"],
        )
    )
    if roc_plot is not None:
        _plot_roc(scores, labels, report.threshold, roc_plot)
        click.echo(f"wrote {roc_plot}")
    if out is not None:
        g.save_pretrained(out)
        click.echo(f"saved calibrated gate to {out}")


def _plot_roc(
    scores: np.ndarray[Any, Any], labels: np.ndarray[Any, Any], threshold: float, path: Path
) -> None:
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        raise click.ClickException("--roc-plot needs matplotlib (pip install matplotlib)") from exc
    order = np.argsort(-scores)
    tpr = np.cumsum(labels[order]) / max(1, labels.sum())
    fpr = np.cumsum(~labels[order]) / max(1, (~labels).sum())
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr)
    at = float(np.mean(scores[~labels] >= threshold)), float(np.mean(scores[labels] >= threshold))
    ax.scatter([at[0]], [at[1]], color="red", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@gate.command("evaluate")
@click.option(
    "--manifest", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--backend",
    default="embedded",
    show_default=True,
    help='"embedded", "clip", or a gate folder/repo.',
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the figures as JSON.",
)
@click.option(
    "--markdown",
    "md_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a markdown table.",
)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@overwrite_option
def evaluate(
    manifest: Path,
    backend: str,
    json_out: Path | None,
    md_out: Path | None,
    batch_size: int,
    overwrite: bool,
) -> None:
    """Measure the gate on a labelled manifest at its shipped threshold."""
    refuse_existing([json_out, md_out], overwrite)
    from ..calibration import calibrate_binary  # noqa: PLC0415
    from ..manifest import read_gate_manifest  # noqa: PLC0415
    from ..metrics import roc_auc  # noqa: PLC0415

    entries = read_gate_manifest(manifest)
    g = _load(backend)
    scores = _scores(g, [e.path for e in entries], batch_size)
    labels = np.array([e.is_cetacean for e in entries])
    thr = g.threshold
    pred = scores >= thr
    groups: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(entries):
        groups[e.group].append(i)
    per_group: dict[str, dict[str, Any]] = {}
    for name, idx in sorted(groups.items()):
        entry: dict[str, Any] = {
            "n": len(idx),
            "label": "cetacean" if labels[idx[0]] else "non_cetacean",
            "accuracy": float(np.mean(pred[idx] == labels[idx])),
            "median_score": float(np.median(scores[idx])),
        }
        if not labels[idx[0]] and labels.any():
            # How well this kind of photo is told apart from every cetacean photo.
            both = np.concatenate([scores[labels], scores[idx]])
            truth = np.concatenate([np.ones(int(labels.sum()), bool), np.zeros(len(idx), bool)])
            entry["roc_auc_vs_cetaceans"] = roc_auc(both, truth)
        per_group[name] = entry
    best = calibrate_binary(scores[labels], scores[~labels])
    result = {
        "backend": g.name,
        "manifest": str(manifest),
        "roc_auc": roc_auc(scores, labels),
        "tpr": float(np.mean(pred[labels])),
        "tnr": float(np.mean(~pred[~labels])),
        "threshold": thr,
        "n_positive": int(labels.sum()),
        "n_negative": int((~labels).sum()),
        "per_group": per_group,
        "recalibrated_on_this_manifest": best.to_dict(),
    }
    click.echo(
        table(
            [
                (
                    k,
                    v["label"],
                    v["n"],
                    fmt(float(v["accuracy"])),
                    fmt(float(v["median_score"])),
                    fmt(float(v["roc_auc_vs_cetaceans"])) if "roc_auc_vs_cetaceans" in v else "",
                )
                for k, v in per_group.items()
            ],
            ["group", "label", "n", "accuracy", "median score", "AUC vs cetaceans"],
        )
    )
    click.echo(
        f"\nROC-AUC {result['roc_auc']:.3f}  TPR {result['tpr']:.3f}  TNR {result['tnr']:.3f}  "
        f"at threshold {thr:.3f}  ({result['n_positive']} positives, {result['n_negative']} negatives)"
    )
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(result, indent=2) + "\n")
        click.echo(f"wrote {json_out}")
    if md_out is not None:
        atomic_write_text(md_out, _gate_markdown(result))
        click.echo(f"wrote {md_out}")


def _gate_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Gate `{result['backend']}` on `{Path(result['manifest']).name}` at its shipped threshold "
        f"{result['threshold']:.3f}: ROC-AUC {result['roc_auc']:.3f}, TPR {result['tpr']:.3f}, "
        f"TNR {result['tnr']:.3f} ({result['n_positive']} cetacean, {result['n_negative']} other photos).",
        "",
        "| group | label | photos | accuracy | median score | ROC-AUC vs cetaceans |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, g in result["per_group"].items():
        auc = g.get("roc_auc_vs_cetaceans")
        lines.append(
            f"| {name} | {g['label']} | {g['n']} | {g['accuracy']:.3f} | "
            f"{g['median_score']:.3f} | {'' if auc is None else f'{auc:.3f}'} |"
        )
    return "\n".join(lines) + "\n"
