"""``ecomarine export-dwc``: results (JSON lines) to a Darwin Core Archive."""

from __future__ import annotations

from pathlib import Path

import click

from ._app import cli
from ._common import overwrite_option, refuse_existing


@cli.command("export-dwc")
@click.argument("results", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The .zip to write.",
)
@click.option("--dataset-title", default=None)
@click.option("--publisher", default=None)
@click.option("--license", "license_", default=None, help="Licence URI for the records.")
@click.option("--recorded-by", default=None)
@click.option("--institution-code", default=None)
@click.option("--include-rejected", is_flag=True)
@overwrite_option
def export_dwc(
    results: Path,
    out: Path,
    dataset_title: str | None,
    publisher: str | None,
    license_: str | None,
    recorded_by: str | None,
    institution_code: str | None,
    include_rejected: bool,
    overwrite: bool,
) -> None:
    """Turn RESULTS (from `ecomarine identify --output x.jsonl`) into a DwC-A for GBIF."""
    from .._text import parse_json, read_utf8  # noqa: PLC0415
    from ..darwin_core import DatasetMetadata, write_dwca  # noqa: PLC0415
    from ..errors import DataError  # noqa: PLC0415
    from ..types import Prediction  # noqa: PLC0415

    refuse_existing([out], overwrite)
    preds = []
    lines = read_utf8(results, "results file").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue

        def fail(why: str, n: int = n) -> DataError:
            return DataError(f"{results}:{n}: not JSON ({why})")

        record = parse_json(line, fail)
        try:
            preds.append(Prediction.from_dict(record))
        except DataError as exc:
            raise DataError(f"{results}:{n}: {exc}") from exc
    defaults = DatasetMetadata()
    ds = DatasetMetadata(
        title=dataset_title or defaults.title,
        publisher=publisher or defaults.publisher,
        license=license_ or defaults.license,
        recorded_by=recorded_by,
        institution_code=institution_code,
    )
    write_dwca(out, preds, ds, include_rejected=include_rejected)
    click.echo(
        f"wrote {out} ({sum(1 for p in preds if include_rejected or not p.rejection_reason)} occurrences)"
    )
