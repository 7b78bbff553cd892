"""``ecomarine identify`` and ``ecomarine demo``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from ._app import cli
from ._common import (
    expand_inputs,
    fmt,
    gate_choice,
    overwrite_option,
    progress,
    refuse_existing,
    table,
    verdict,
    write_predictions,
)


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--gallery",
    "gallery_dir",
    type=click.Path(file_okay=False),
    help="Gallery folder of known individuals.",
)
@click.option(
    "--model",
    default="embedded",
    show_default=True,
    help='"embedded", a model/pipeline folder, or a Hub repo id.',
)
@click.option(
    "--gate",
    "gate_name",
    default=None,
    help='Gate override: "embedded", a folder, a repo id, or "none".',
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write results (.csv or .jsonl).",
)
@click.option(
    "--dwca",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a Darwin Core Archive (.zip).",
)
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 4096))
@click.option("--workers", default=None, type=click.IntRange(1, 64), help="Decode threads.")
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(1, 100))
@overwrite_option
def identify(
    paths: tuple[str, ...],
    gallery_dir: str | None,
    model: str,
    gate_name: str | None,
    output: Path | None,
    dwca: Path | None,
    batch_size: int,
    workers: int | None,
    top_k: int,
    overwrite: bool,
) -> None:
    """Identify the animals in PATHS (files, folders searched recursively, or globs)."""
    from ..pipeline import Pipeline  # noqa: PLC0415 - keep `ecomarine --help` fast

    # Every argument is checked before a model loads or a photo is read.
    if output is not None and output.suffix.lower() not in (".csv", ".jsonl"):
        raise click.BadParameter(f"{output}: must end in .csv or .jsonl", param_hint="--output")
    if dwca is not None and dwca.suffix.lower() != ".zip":
        raise click.BadParameter(f"{dwca}: must end in .zip", param_hint="--dwca")
    refuse_existing([output, dwca], overwrite)
    if gallery_dir is not None and not (Path(gallery_dir) / "gallery.json").is_file():
        raise click.BadParameter(
            f"{gallery_dir}: not a gallery (no gallery.json)", param_hint="--gallery"
        )
    files = expand_inputs(paths)
    if not files:
        raise click.BadParameter("no image files found", param_hint="PATHS")
    pipe = Pipeline.from_pretrained(model, gallery=gallery_dir, gate=gate_choice(gate_name))
    pipe.top_k = top_k
    preds = list(
        progress(
            pipe.predict_many(files, batch_size=batch_size, num_workers=workers),
            len(files),
            "identifying",
        )
    )
    rows = [
        (
            Path(p.source or "").name,
            verdict(p),
            fmt(p.candidates[0].score if p.candidates else None),
            p.species or "",
            fmt(p.gate_score),
        )
        for p in preds
    ]
    click.echo(table(rows, ["photo", "verdict", "score", "species", "gate"]))
    counts = Counter(
        "rejected" if p.rejection_reason else "new" if p.is_new_individual else "identified"
        for p in preds
    )
    click.echo(
        f"\n{len(preds)} photos: {counts['identified']} identified, {counts['new']} new individuals, "
        f"{counts['rejected']} rejected"
    )
    if output is not None:
        write_predictions(output, preds)
        click.echo(f"wrote {output}")
    if dwca is not None:
        from ..darwin_core import write_dwca  # noqa: PLC0415

        write_dwca(dwca, preds)
        click.echo(f"wrote {dwca}")


def _examples_dir() -> Path:
    here = Path(__file__).resolve().parents[1]
    for candidate in (here / "_examples", here.parents[1] / "examples"):
        if (candidate / "belugas" / "gallery.csv").is_file():
            return candidate
    raise click.ClickException("the bundled example images are missing; reinstall ecomarine")


@cli.command()
def demo() -> None:
    """Offline demo: build a gallery of 12 belugas and identify held-out photos."""
    from ..catalog import read_catalog_csv  # noqa: PLC0415
    from ..pipeline import Pipeline  # noqa: PLC0415

    root = _examples_dir()
    belugas = root / "belugas"
    gallery_rows = read_catalog_csv(belugas / "gallery.csv", belugas)
    query_rows = read_catalog_csv(belugas / "queries.csv", belugas)
    pipe = Pipeline.from_pretrained("embedded")
    click.echo(
        f"model: {pipe.identifier.config.name} (bundled, offline); gate: {pipe.gate.name if pipe.gate else 'none'}"
    )
    pipe.enroll(
        [s.path for s in gallery_rows],
        [s.individual_id for s in gallery_rows],
        species="beluga",
        metadata=[s.metadata() for s in gallery_rows],
    )
    assert pipe.gallery is not None
    click.echo(
        f"gallery: {len(pipe.gallery)} photos of {len(pipe.gallery.individuals())} belugas\n"
    )
    photos = [s.path for s in query_rows] + sorted((root / "not_cetacean").glob("*.jpg"))
    truth = {s.path.name: s.individual_id for s in query_rows}
    rows, right, flagged_new = [], 0, 0
    for p in pipe.predict_many(photos, batch_size=16):
        name = Path(p.source or "").name
        best = p.candidates[0] if p.candidates else None
        if name in truth:
            ok = best is not None and best.individual_id == truth[name]
            right += ok
            flagged_new += p.is_new_individual
            verdict_text = "new individual?" if p.is_new_individual else "known"
            rows.append(
                (
                    name,
                    truth[name],
                    best.individual_id if best else "",
                    fmt(best.score if best else None),
                    verdict_text,
                    "yes" if ok else "no",
                )
            )
        else:
            rows.append(
                (
                    name,
                    "(not a cetacean)",
                    "",
                    "",
                    verdict(p),
                    "yes" if p.rejection_reason else "no",
                )
            )
    click.echo(
        table(rows, ["photo", "truth", "best match", "score", "open-set verdict", "correct"])
    )
    threshold = pipe.new_individual_threshold
    click.echo(
        f"\nBest match right for {right} of {len(truth)} belugas; the non-cetacean photo was {'rejected by the gate' if rows[-1][-1] == 'yes' else 'NOT rejected'}."
    )
    if threshold is not None:
        click.echo(
            f"{flagged_new} of {len(truth)} scored under the shipped new-individual threshold ({threshold:.3f}),"
            " which was calibrated for a new survey season in which about half of the whales are unseen;"
            " for a catalogue you know to be complete, lower Gallery.new_individual_threshold."
        )
    click.echo(
        "These belugas were photographed in 2017-2018, the seasons the embedded model was trained on;"
        " see benchmarks/results/beluga.md for accuracy on a new season."
    )
