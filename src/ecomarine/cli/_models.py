"""``ecomarine models`` and ``ecomarine compare``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .._atomic import atomic_write_text
from ._app import cli
from ._common import (
    catalog_columns_option,
    check_model,
    overwrite_option,
    progress_callback,
    refuse_existing,
    table,
)


@cli.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Hugging Face cache to look in (default: the usual one).",
)
def models(as_json: bool, cache_dir: Path | None) -> None:
    """List the documented model sources: architecture, input, licence, where, cached."""
    from ..zoo import KNOWN_MODELS, is_cached  # noqa: PLC0415

    rows = []
    for m in KNOWN_MODELS:
        rows.append(
            {
                "source": m.source,
                "architecture": m.architecture,
                "input": f"{m.input_size[0]}x{m.input_size[1]}",
                "license": m.license,
                "weights": "bundled" if m.repo_id is None else f"Hugging Face Hub ({m.layout})",
                "cached": is_cached(m, cache_dir),
                "trained_on": m.trained_on,
                "reported": m.reported,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(
        table(
            [
                [
                    r["source"],
                    r["architecture"],
                    r["input"],
                    r["license"],
                    r["weights"],
                    "yes" if r["cached"] else "no",
                ]
                for r in rows
            ],
            ["source", "architecture", "input", "licence", "weights", "cached"],
        )
    )
    click.echo(
        "\nLoad one with Identifier.from_pretrained(SOURCE) or --model SOURCE; compare them on "
        "your catalogue with `ecomarine compare`. Weights not cached are downloaded on first "
        "use (not with HF_HUB_OFFLINE=1)."
    )


@cli.command("compare")
@click.argument("more_models", nargs=-1, metavar="[MODEL]...")
@click.option(
    "--models",
    "model_options",
    multiple=True,
    help="Models to compare: bundled names, folders or hf-hub: ids (`--models A B ...`).",
)
@click.option(
    "--gallery-csv",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The catalogue (image,individual_id[,encounter,...]).",
)
@click.option(
    "--query-csv",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Photos to identify, with their true ids (absent ids count as new individuals).",
)
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--calibration-csv",
    type=click.Path(exists=True, dir_okay=False),
    help="Held-out queries for each model's threshold (default: leave-encounter-out on the "
    "gallery).",
)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write JSON."
)
@click.option(
    "--md", "md_out", type=click.Path(dir_okay=False, path_type=Path), help="Write markdown."
)
@catalog_columns_option
@overwrite_option
def compare(
    more_models: tuple[str, ...],
    model_options: tuple[str, ...],
    gallery_csv: str,
    query_csv: str,
    images: str,
    calibration_csv: str | None,
    batch_size: int,
    json_out: Path | None,
    md_out: Path | None,
    columns: dict[str, str],
    overwrite: bool,
) -> None:
    """Evaluate several models on your catalogue and print one table to choose from.

    Every model is evaluated on the same photos with the same threshold procedure
    (leave-encounter-out on the gallery, or --calibration-csv): top-1 and top-5 over
    queries of known individuals, MAP@5 with new individuals, and photos per second here.
    """
    refuse_existing([json_out, md_out], overwrite)
    from ..catalog import read_catalog_csv  # noqa: PLC0415
    from ..evaluation import compare_models, comparison_markdown  # noqa: PLC0415

    sources = list(dict.fromkeys([*model_options, *more_models]))
    if len(sources) < 1:
        raise click.UsageError("name at least one model: --models A B ...")
    for source in sources:
        check_model(source, param_hint="--models")
    gallery_rows = read_catalog_csv(gallery_csv, images, columns=columns)
    query_rows = read_catalog_csv(query_csv, images, columns=columns)
    calibration_rows = (
        read_catalog_csv(calibration_csv, images, columns=columns) if calibration_csv else None
    )
    total = (len(gallery_rows) + len(query_rows) + len(calibration_rows or [])) * len(sources)
    with progress_callback(total, "embedding") as advance:
        rows = compare_models(
            sources,
            gallery_rows,
            query_rows,
            calibration_samples=calibration_rows,
            batch_size=batch_size,
            progress=advance,
        )
    md = comparison_markdown(rows)
    click.echo(md, nl=False)
    for row in rows:
        if row.license:
            click.echo(f"{row.source}: weights licensed {row.license}", err=True)
    if json_out is not None:
        atomic_write_text(json_out, json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
    if md_out is not None:
        atomic_write_text(md_out, md)
