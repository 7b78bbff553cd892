"""``ecomarine identify`` and ``ecomarine demo``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ._app import cli
from ._common import (
    IMAGE_SUFFIXES,
    UNMATCHED_NOTE,
    FiniteFloatRange,
    InputFile,
    best_guess,
    check_gallery_dir,
    check_model,
    expand_inputs,
    expand_named_inputs,
    fmt,
    gate_choice,
    gate_override_option,
    outcome,
    overwrite_option,
    pipeline_model_option,
    progress,
    refuse_existing,
    table,
    verdict,
)
from ._dwc import DwcSettings, dwc_options
from ._sightings import SightingOptions, run_sightings, sighting_options

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..pipeline import Pipeline
    from ..results import Record
    from ..types import Prediction


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--gallery",
    "gallery_dir",
    type=click.Path(file_okay=False),
    help="Gallery folder of known individuals.",
)
@pipeline_model_option
@gate_override_option
@click.option(
    "--threshold",
    type=FiniteFloatRange(-1, 1),
    default=None,
    help="Open-set threshold for this run (default: the gallery's override, else the "
    "model's calibrated one).",
)
@click.option(
    "--alpha",
    type=FiniteFloatRange(0, 1, min_open=True, max_open=True),
    default=0.1,
    show_default=True,
    help="Candidate sets hold the true answer with probability at least 1 - alpha.",
)
@click.option(
    "--decision",
    type=click.Choice(["threshold", "probability"]),
    default="threshold",
    show_default=True,
    help="Known vs new: the best score against the open-set threshold, or p_known >= 0.5 "
    "with a candidate set naming exactly one individual (needs a calibrated model).",
)
@click.option(
    "--new-share",
    type=FiniteFloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Expected share of new animals in this survey (default: the model's); "
    "re-weights p_known and the candidate sets.",
)
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    help="Write results (.csv or .jsonl), each photo's as soon as it is made; with --ray, "
    "a folder of Parquet (or --ray-format jsonl) files.",
)
@click.option(
    "--ray",
    "ray_address",
    default=None,
    help='Run on a Ray cluster (extra "ray"): its address, or "local" to start one here. '
    "A rerun skips photos already in --output.",
)
@click.option(
    "--ray-format",
    type=click.Choice(["parquet", "jsonl"]),
    default="parquet",
    show_default=True,
    help="File format of the rows written with --ray.",
)
@click.option(
    "--ray-actors",
    default=1,
    show_default=True,
    type=click.IntRange(1, 4096),
    help="Actors (each holds the pipeline) with --ray.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run: skip photos already in --output and append.",
)
@click.option(
    "--dwca",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a Darwin Core Archive (.zip); needs --license.",
)
@sighting_options
@dwc_options
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 4096))
@click.option("--workers", default=None, type=click.IntRange(1, 64), help="Decode threads.")
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(1, 100))
@overwrite_option
def identify(
    paths: tuple[str, ...],
    gallery_dir: str | None,
    model: str,
    gate_name: str | None,
    threshold: float | None,
    alpha: float,
    decision: str,
    new_share: float | None,
    output: Path | None,
    ray_address: str | None,
    ray_format: str,
    ray_actors: int,
    resume: bool,
    dwca: Path | None,
    sightings: SightingOptions | None,
    dwc: DwcSettings,
    batch_size: int,
    workers: int | None,
    top_k: int,
    overwrite: bool,
) -> None:
    """Identify the animals in PATHS (files, folders searched recursively, or globs)."""
    from ..results import ResultsWriter, completed_sources  # noqa: PLC0415
    from ..sightings import VIDEO_SUFFIXES  # noqa: PLC0415

    # Every argument is checked before a model loads or a photo is read.
    if ray_address is not None:
        given = {
            "--sightings": sightings is not None, "--dwca": dwca is not None, "--resume": resume,
            "--threshold": threshold is not None, "--new-share": new_share is not None,
            "--decision": decision != "threshold", "--gate": gate_name is not None,
        }  # fmt: skip
        unsupported = [name for name, on in given.items() if on]
        if unsupported:
            raise click.UsageError(f"{', '.join(unsupported)}: not available with --ray")
        if output is None:
            raise click.BadParameter(
                "--ray writes its rows to a folder; give one", param_hint="--output"
            )
        _identify_on_ray(
            paths, model, gallery_dir, output, ray_address, ray_format, ray_actors, batch_size
        )
        return
    if output is not None and output.is_dir():
        raise click.BadParameter(
            f"{output}: a folder (only --ray writes folders)", param_hint="--output"
        )
    if output is not None and output.suffix.lower() not in (".csv", ".jsonl"):
        raise click.BadParameter(f"{output}: must end in .csv or .jsonl", param_hint="--output")
    if dwca is not None and dwca.suffix.lower() != ".zip":
        raise click.BadParameter(f"{dwca}: must end in .zip", param_hint="--dwca")
    if resume and output is None:
        raise click.BadParameter(
            "--resume continues an --output file; give one", param_hint="--resume"
        )
    if resume and overwrite:
        raise click.UsageError("--resume keeps the output and --overwrite replaces it; pick one")
    refuse_existing(
        [None if resume else output],
        overwrite,
        "continue it with --resume, or pass --overwrite to replace it",
    )
    refuse_existing([dwca], overwrite)
    check_gallery_dir(gallery_dir)
    check_model(model)
    if threshold is not None and gallery_dir is None:
        raise click.BadParameter(
            "applies to a catalogue search; give --gallery", param_hint="--threshold"
        )
    if dwca is not None:
        dwc.check()
    if sightings is not None:
        sightings.check()
    inputs = expand_named_inputs(
        paths,
        VIDEO_SUFFIXES
        if sightings is not None and sightings.grouping == "video"
        else IMAGE_SUFFIXES,
    )
    if not inputs:
        raise click.BadParameter("no image (or video) files found", param_hint="PATHS")
    if sightings is not None:
        pipe = _load(model, gallery_dir, gate_name, top_k, alpha, new_share, decision)
        found = run_sightings(
            pipe,
            sightings,
            inputs,
            output=output,
            resume=resume,
            threshold=threshold,
            batch_size=batch_size,
            workers=workers,
        )
        _finish(output, dwca, dwc, found, inputs)
        return
    todo = inputs
    if resume and output is not None and output.exists():
        done = completed_sources(output)
        todo = [f for f in inputs if str(f.path) not in done]
        click.echo(f"resuming {output}: {len(inputs) - len(todo)} of {len(inputs)} photos done")
    pipe = _load(model, gallery_dir, gate_name, top_k, alpha, new_share, decision)
    if threshold is not None and pipe.gallery is not None:
        pipe.gallery.new_individual_threshold = threshold  # this run only; never saved
    names = {str(f.path): f.name for f in inputs}
    preds: list[Prediction] = []
    writer = ResultsWriter(output, append=resume) if output is not None else None
    try:
        stream = pipe.predict_many(
            [f.path for f in todo], batch_size=batch_size, num_workers=workers
        )
        for pred in progress(stream, len(todo), "identifying"):
            if writer is not None:
                writer.write(pred)
            preds.append(pred)
    finally:
        if writer is not None:
            writer.close()
    rows = [
        (
            names.get(p.source or "", p.source or ""),
            verdict(p),
            *best_guess(p),
            fmt(p.p_known, 2),
            _set_text(p.candidate_set),
            p.species or "",
            fmt(p.gate_score),
        )
        for p in preds
    ]
    click.echo(
        table(
            rows,
            [
                "photo",
                "verdict",
                "best match",
                "score",
                "p_known",
                "candidate set",
                "species",
                "gate",
            ],
        )
    )
    click.echo("\n" + _summary(preds, pipe, threshold_given=threshold is not None))
    _finish(output, dwca, dwc, preds, inputs)


def _finish(
    output: Path | None,
    dwca: Path | None,
    dwc: DwcSettings,
    made: Sequence[Record],
    inputs: list[InputFile],
) -> None:
    """Say where the results went; write the archive from every record of the output.

    A resumed run's output also holds earlier records, so the archive reads them back.
    """
    from ..results import read_results  # noqa: PLC0415

    if output is not None:
        click.echo(f"wrote {output}")
    if dwca is not None:
        records = read_results(output) if output is not None else made
        n = dwc.write(dwca, records, media_root=_common_root(inputs))
        click.echo(f"wrote {dwca} ({n} occurrences, licence {dwc.metadata().license_uri()})")


def _identify_on_ray(
    paths: Sequence[str],
    model: str,
    gallery_dir: str | None,
    output: Path,
    address: str,
    fmt: str,
    actors: int,
    batch_size: int,
) -> None:
    """``identify --ray``: the rows go to ``output`` (a folder) from a Ray actor pool."""
    from ..distributed import done_paths, identify_dataset  # noqa: PLC0415
    from ..distributed import ray_init as init  # noqa: PLC0415

    check_gallery_dir(gallery_dir)
    if output.exists() and not output.is_dir():
        raise click.BadParameter(f"{output}: exists and is not a folder", param_hint="--output")
    check_model(model)
    files = [str(f.resolve()) for f in expand_inputs(paths)]
    if not files:
        raise click.BadParameter("no image files found", param_hint="PATHS")
    before = len(done_paths(output))
    init(None if address == "local" else address)
    identify_dataset(
        files, model, gallery_dir, output=output, output_format=fmt, num_actors=actors,
        batch_size=batch_size,
    )  # fmt: skip
    click.echo(f"{len(done_paths(output)) - before} photos written to {output} ({fmt})")


def _load(
    model: str,
    gallery_dir: str | None,
    gate_name: str | None,
    top_k: int,
    alpha: float = 0.1,
    new_share: float | None = None,
    decision: str = "threshold",
) -> Pipeline:
    from ..pipeline import Pipeline  # noqa: PLC0415

    pipe = Pipeline.from_pretrained(model, gallery=gallery_dir, gate=gate_choice(gate_name))
    pipe.top_k = top_k
    pipe.alpha = alpha
    pipe.new_share = new_share
    if decision == "probability":
        if pipe.uncertainty is None:
            raise click.BadParameter(
                "the model has no calibration data for probabilities", param_hint="--decision"
            )
        pipe.decision = "probability"
    return pipe


def _set_text(labels: tuple[str, ...] | None, shown: int = 3) -> str:
    """A candidate set in a table cell: its size and first labels."""
    if labels is None:
        return ""
    from ..uncertainty import NEW_INDIVIDUAL, OTHER_KNOWN  # noqa: PLC0415

    short = [{NEW_INDIVIDUAL: "new", OTHER_KNOWN: "other"}.get(x, x) for x in labels]
    more = f" +{len(short) - shown}" if len(short) > shown else ""
    return f"{len(short)}: {' '.join(short[:shown])}{more}"


def _summary(preds: list[Prediction], pipe: Pipeline, *, threshold_given: bool) -> str:
    counts = Counter(outcome(p) for p in preds)
    lines = [
        f"{len(preds)} photos: {counts['identified']} identified, {counts['new']} new individuals, "
        f"{counts['rejected']} rejected"
    ]
    if counts["unmatched"]:
        lines.append(f"{counts['unmatched']} cetacean photos {UNMATCHED_NOTE}")
    if pipe.gallery is not None:
        thr = pipe.new_individual_threshold
        source = "--threshold" if threshold_given else pipe.threshold_source
        if pipe.decision == "probability":
            policy = (
                f"known when p_known >= {pipe.known_level:.2f} and the candidate set names one "
                "individual (--decision probability); else new"
            )
        elif thr is not None:
            policy = f"new individual when the best match scores under {thr:.3f} (from {source})"
        else:
            policy = "no threshold (never new): the model has no calibrated one; pass --threshold"
        lines.append(f"open-set policy: {policy}")
        calib = pipe.uncertainty
        lines.append(
            f"p_known assumes {pipe.new_share if pipe.new_share is not None else calib.new_share:.2f} "
            f"of animals are new (--new-share); candidate sets hold the answer with "
            f"probability >= {1 - pipe.alpha:.2f} (--alpha), if the photos resemble the "
            "model's calibration photos"
            if calib is not None
            else "no p_known or candidate sets: the model has no calibration data"
        )
    return "\n".join(lines)


def _common_root(inputs: list[InputFile]) -> Path | None:
    """The one input folder every photo came from, if there is one (for media URLs)."""
    roots = {f.root for f in inputs}
    if len(roots) == 1:
        return next(iter(roots))
    return None


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
    rows, right, flagged_new, in_set = [], 0, 0, 0
    for p in pipe.predict_many(photos, batch_size=16):
        name = Path(p.source or "").name
        best = p.candidates[0] if p.candidates else None
        if name in truth:
            ok = best is not None and best.individual_id == truth[name]
            right += ok
            flagged_new += p.is_new_individual
            covered = p.candidate_set is not None and truth[name] in p.candidate_set
            in_set += covered
            rows.append(
                (
                    name,
                    truth[name],
                    best.individual_id if best else "",
                    fmt(best.score if best else None),
                    fmt(p.p_known, 2),
                    _set_text(p.candidate_set),
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
                    "",
                    verdict(p),
                    "yes" if p.rejection_reason else "no",
                )
            )
    click.echo(
        table(
            rows,
            [
                "photo",
                "truth",
                "best match",
                "score",
                "p_known",
                f"{1 - pipe.alpha:.0%} candidate set",
                "correct",
            ],
        )
    )
    threshold = pipe.new_individual_threshold
    click.echo(
        f"\nBest match right for {right} of {len(truth)} belugas; the non-cetacean photo was {'rejected by the gate' if rows[-1][-1] == 'yes' else 'NOT rejected'}."
    )
    calib = pipe.uncertainty
    if calib is not None:
        click.echo(
            f"The true whale is in the {1 - pipe.alpha:.0%} candidate set for {in_set} of {len(truth)}. p_known is the "
            f"probability that a photo's whale is in the catalogue, calibrated for a season in which "
            f"{calib.new_share:.0%} of the whales are new (a set may also hold 'new' and 'other': "
            "someone in the catalogue who is not listed)."
        )
    if threshold is not None:
        click.echo(
            f"{flagged_new} of {len(truth)} scored under the shipped new-individual threshold ({threshold:.3f})"
            " and would be called new by the threshold alone; for a catalogue you know to be complete,"
            " tell `ecomarine identify` with a lower --new-share (or lower Gallery.new_individual_threshold)."
        )
    click.echo(
        "These belugas were photographed in 2017-2018, the seasons the embedded model was trained on;"
        " see benchmarks/results/beluga.md for accuracy on a new season."
    )
