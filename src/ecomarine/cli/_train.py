"""``ecomarine train``, ``ecomarine evaluate`` and ``ecomarine ensemble``."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import click

from .._atomic import atomic_write_text
from ..training.config import TrainConfig
from ..types import EmbeddingKind
from ._app import cli
from ._common import (
    FiniteFloatRange,
    catalog_columns_option,
    check_model,
    kind_option,
    overwrite_option,
    progress_callback,
    refuse_existing,
)
from ._options import build_dataclass, dataclass_options

# Shared by the commands that calibrate open-set thresholds.
_new_fraction = click.option(
    "--new-fraction",
    type=FiniteFloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Expected share of new individuals among future queries.",
)


def _command(parts: list[str], options: dict[str, object]) -> str:
    """The shell command line to record: ``parts`` plus the options that were given."""
    import shlex  # noqa: PLC0415

    for flag, value in options.items():
        if value is not None:
            parts += [flag, str(value)]
    return shlex.join(parts)


@cli.command()
@dataclass_options(TrainConfig)
@click.option(
    "--print-config", is_flag=True, help="Print the resolved configuration as JSON and exit."
)
@catalog_columns_option
@overwrite_option
def train(print_config: bool, overwrite: bool, columns: dict[str, str], **values: Any) -> None:
    """Train an identifier (ArcFace) on a labelled catalogue."""
    cfg = dataclasses.replace(build_dataclass(TrainConfig, values), columns=columns)
    if print_config:
        click.echo(json.dumps(cfg.to_dict(), indent=2))
        return
    if cfg.resume is None:  # resuming continues in the same folder, on purpose
        refuse_existing(
            [Path(cfg.out) / "config.json", Path(cfg.out) / "checkpoints"],
            overwrite,
            f"{cfg.out} holds a trained model or a run; continue it with --resume "
            f"{Path(cfg.out) / 'checkpoints' / 'last.pt'}, or pass --overwrite",
        )
    from ..training import train as run  # noqa: PLC0415 - loads torch and the loop

    logging.getLogger("ecomarine").setLevel(logging.INFO)
    result = run(cfg)
    click.echo(
        f"trained {cfg.epochs} epochs in {result.seconds / 60:.1f} min; final loss {result.losses[-1]:.4f}"
    )
    if result.calibration:
        c = result.calibration["embedding"]
        click.echo(f"open-set threshold {c['threshold']:.3f} (calibration MAP@5 {c['map5']:.3f})")
    click.echo(f"model written to {result.out}")


@cli.command()
@click.option("--model", default="embedded", show_default=True)
@click.option("--gallery-csv", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--query-csv", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--threshold-from",
    type=click.Path(exists=True, dir_okay=False),
    help="Calibrate the threshold on these queries instead of using the model's.",
)
@click.option(
    "--threshold", type=FiniteFloatRange(-1, 1), default=None, help="Use this open-set threshold."
)
@kind_option()
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--markdown", "md_out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1, 4096))
@click.option(
    "--alpha",
    "alphas",
    type=FiniteFloatRange(0, 1, min_open=True, max_open=True),
    multiple=True,
    help="Measure the candidate sets at this alpha (repeatable; default 0.1 and 0.2).",
)
@click.option(
    "--new-share",
    type=FiniteFloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Share of new animals p_known assumes (default: the model's).",
)
@catalog_columns_option
@overwrite_option
def evaluate(
    model: str,
    gallery_csv: str,
    query_csv: str,
    images: str,
    threshold_from: str | None,
    threshold: float | None,
    kind: EmbeddingKind,
    json_out: Path | None,
    md_out: Path | None,
    batch_size: int,
    alphas: tuple[float, ...],
    new_share: float | None,
    columns: dict[str, str],
    overwrite: bool,
) -> None:
    """Open-set evaluation: MAP@5, top-1/5, ROC-AUC, mAP; calibration of p_known and sets."""
    refuse_existing([json_out, md_out], overwrite)
    from ..catalog import read_catalog_csv  # noqa: PLC0415
    from ..evaluation import evaluate_open_set, report_markdown  # noqa: PLC0415
    from ..identifier import Identifier  # noqa: PLC0415

    check_model(model)
    gallery_rows = read_catalog_csv(gallery_csv, images, columns=columns)
    query_rows = read_catalog_csv(query_csv, images, columns=columns)
    calibration_rows = (
        read_catalog_csv(threshold_from, images, columns=columns) if threshold_from else None
    )
    ident = Identifier.from_pretrained(model)
    total = len(gallery_rows) + len(query_rows) + len(calibration_rows or [])
    with progress_callback(total, "embedding") as advance:
        report = evaluate_open_set(
            ident,
            gallery_rows,
            query_rows,
            kind=kind,
            threshold=threshold,
            calibration_samples=calibration_rows,
            batch_size=batch_size,
            progress=advance,
            alphas=alphas or (0.1, 0.2),
            new_share=new_share,
        )
    md = report_markdown(report)
    click.echo(md)
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(report.to_dict(), indent=2) + "\n")
    if md_out is not None:
        atomic_write_text(md_out, md)


@cli.command()
@click.argument("members", nargs=-1, required=True)
@click.option("--out", required=True, type=click.Path(file_okay=False))
@click.option("--name", default="ensemble", show_default=True)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(exists=True, dir_okay=False),
    help="The members' training CSV (the calibration gallery).",
)
@click.option(
    "--calibration-csv",
    type=click.Path(exists=True, dir_okay=False),
    help="Held-out queries for the open-set thresholds (needs --csv and --images).",
)
@click.option("--images", type=click.Path(exists=True, file_okay=False))
@_new_fraction
@click.option(
    "--half/--no-half", default=True, show_default=True, help="Store the weights in float16."
)
@overwrite_option
def ensemble(
    members: tuple[str, ...],
    out: str,
    name: str,
    csv_path: str | None,
    calibration_csv: str | None,
    images: str | None,
    new_fraction: float | None,
    half: bool,
    overwrite: bool,
) -> None:
    """Combine trained identifiers (MEMBERS: folders or Hub ids) into one ensemble.

    An ensemble among MEMBERS joins network by network, so every network weighs the same.
    """
    refuse_existing([out], overwrite)
    import torch  # noqa: PLC0415

    from ..catalog import read_catalog_csv  # noqa: PLC0415
    from ..ensemble import build_ensemble, ensemble_card  # noqa: PLC0415
    from ..identifier import Identifier  # noqa: PLC0415

    train_samples = calibration_samples = None
    if calibration_csv:
        if not (csv_path and images):
            raise click.UsageError("--calibration-csv needs --csv and --images")
        train_samples = read_catalog_csv(csv_path, images)
        calibration_samples = read_catalog_csv(calibration_csv, images)
    models = [Identifier.from_pretrained(m, device="cpu") for m in members]
    dtype = torch.float16 if half else None
    model, calibration = build_ensemble(
        models,
        name=name,
        train_samples=train_samples,
        calibration_samples=calibration_samples,
        new_fraction=new_fraction,
        dtype=dtype,
    )
    command = _command(
        ["ecomarine", "ensemble", *members, "--out", out, "--name", name],
        {
            "--csv": csv_path,
            "--calibration-csv": calibration_csv,
            "--images": images,
            "--new-fraction": new_fraction,
        },
    )
    command += " --half" if half else " --no-half"
    card = ensemble_card(model, command, members, calibration)
    model.save_pretrained(out, model_card=card, dtype=dtype)
    if calibration:
        c = calibration["embedding"]
        click.echo(f"open-set threshold {c['threshold']:.3f} (calibration MAP@5 {c['map5']:.3f})")
    else:
        click.echo("no calibration data: the ensemble has no open-set threshold")
    click.echo(f"ensemble of {len(models)} written to {out}")


@cli.command()
@click.argument("model", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--csv",
    "csv_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The model's training CSV (the calibration gallery).",
)
@click.option(
    "--calibration-csv",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Held-out queries (never trained on).",
)
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False))
@_new_fraction
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Write a calibrated copy here (default: update MODEL in place).",
)
@click.option(
    "--test-time-flip/--no-test-time-flip",
    default=None,
    help="Switch flip test-time augmentation on (or off) and calibrate with it (default: "
    "as the model has it). A switch drops the sighting and uncertainty calibrations, "
    "which were fitted on the other vectors.",
)
@overwrite_option
def calibrate(
    model: str,
    csv_path: str,
    calibration_csv: str,
    images: str,
    new_fraction: float | None,
    out: str | None,
    test_time_flip: bool | None,
    overwrite: bool,
) -> None:
    """Choose an identifier folder's open-set thresholds on held-out queries.

    Both kinds (trained embedding and general features) are calibrated through the
    inference path; config.json gets the thresholds and the model card a record.
    """
    if out is not None and Path(out).resolve() != Path(model).resolve():
        refuse_existing([out], overwrite)
    from ..calibration import calibrate_identifier  # noqa: PLC0415
    from ..catalog import read_catalog_csv  # noqa: PLC0415
    from ..identifier import Identifier  # noqa: PLC0415
    from ..training.recalibrate import switch_test_time_flip, write_calibration  # noqa: PLC0415

    train_samples = read_catalog_csv(csv_path, images)
    held_out = read_catalog_csv(calibration_csv, images)
    ident = Identifier.from_pretrained(model)
    if test_time_flip is not None and test_time_flip != ident.config.test_time_flip:
        ident.config = switch_test_time_flip(ident.config, test_time_flip)
        click.echo(
            f"test-time flip {'on' if test_time_flip else 'off'}: sighting and uncertainty "
            "calibrations dropped (refit them for the new vectors)"
        )
    result = calibrate_identifier(ident, train_samples, held_out, new_fraction=new_fraction)
    command = (
        _command(
            ["ecomarine", "calibrate", model],
            {
                "--csv": csv_path,
                "--calibration-csv": calibration_csv,
                "--images": images,
                "--new-fraction": new_fraction,
                "--out": out,
            },
        )
        + ({True: " --test-time-flip", False: " --no-test-time-flip", None: ""}[test_time_flip])
    )
    target = write_calibration(
        Path(model), ident.config, result, command, out=Path(out) if out else None
    )
    e, f = result["embedding"], result["features"]
    click.echo(
        f"open-set thresholds: embedding {e['threshold']:.3f} (calibration MAP@5 "
        f"{e['map5']:.3f}), features {f['threshold']:.3f} (MAP@5 {f['map5']:.3f})"
    )
    click.echo(f"written to {target}")
