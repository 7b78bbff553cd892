"""``ecomarine identify --sightings ...``: photos grouped into sightings, identified together."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ._common import (
    UNMATCHED_NOTE,
    InputFile,
    best_guess,
    outcome,
    progress,
    table,
    verdict,
    with_options,
)

if TYPE_CHECKING:
    from ..pipeline import Pipeline
    from ..types import SightingPrediction

#: How ``--sightings`` groups the inputs.
GROUPINGS = ("folders", "time", "column", "video")
# Sightings identified per network round: results reach the output as they are made.
_CHUNK = 16


@dataclass(frozen=True)
class SightingOptions:
    """What the sighting options asked for."""

    grouping: str
    gap: str
    sighting_csv: Path | None
    sighting_column: str | None
    time_column: str | None
    frame_rate: float
    aggregation: str | None

    def check(self) -> None:
        """Refuse inconsistent options before anything loads.

        Raises:
            click.BadParameter: Naming the option.
        """
        from ..errors import DataError, GalleryError  # noqa: PLC0415
        from ..search import check_set_aggregation  # noqa: PLC0415
        from ..sightings import parse_gap  # noqa: PLC0415

        if self.grouping == "column" and (self.sighting_csv is None or not self.sighting_column):
            raise click.BadParameter(
                "--sightings column needs --sighting-csv and --sighting-column",
                param_hint="--sightings",
            )
        if self.time_column and self.sighting_csv is None:
            raise click.BadParameter("needs --sighting-csv", param_hint="--time-column")
        try:
            parse_gap(self.gap)
            if self.aggregation is not None:
                check_set_aggregation(self.aggregation)
        except (DataError, GalleryError) as exc:
            raise click.BadParameter(str(exc)) from exc

    def group(self, inputs: list[InputFile]) -> tuple[dict[str, list[Any]], dict[str, list[str]]]:
        """Sighting id -> sources, and sighting id -> the name of each source."""
        from ..sightings import (  # noqa: PLC0415
            by_column,
            by_folder,
            by_time,
            parse_gap,
            read_sighting_csv,
            video_frames,
        )

        named = [(f.path, f.name) for f in inputs]
        if self.grouping == "video":
            sources: dict[str, list[Any]] = {}
            names: dict[str, list[str]] = {}
            for f in progress(inputs, len(inputs), "reading videos"):
                frames = video_frames(f.path, fps=self.frame_rate)
                sources[f.name] = [image for _, image in frames]
                names[f.name] = [name for name, _ in frames]
            return sources, names
        if self.grouping == "folders":
            groups = by_folder(named)
        elif self.grouping == "time":
            times: dict[str, datetime] = {}
            if self.sighting_csv is not None and self.time_column:
                _, times = read_sighting_csv(self.sighting_csv, time_column=self.time_column)
            groups = by_time(named, parse_gap(self.gap), times)
        else:
            if self.sighting_csv is None or self.sighting_column is None:  # check() refused
                raise click.UsageError(
                    "--sightings column needs --sighting-csv and --sighting-column"
                )
            ids, _ = read_sighting_csv(self.sighting_csv, self.sighting_column)
            groups = by_column(named, ids)
        return {k: list(v) for k, v in groups.items()}, {
            k: [str(p) for p in v] for k, v in groups.items()
        }


def sighting_options(func: Any) -> Any:
    """The ``--sightings`` options, handed to the command as ``sightings: SightingOptions | None``."""
    import functools  # noqa: PLC0415

    @functools.wraps(func)
    def wrapper(
        *args: Any,
        sightings: str | None,
        gap: str,
        sighting_csv: Path | None,
        sighting_column: str | None,
        time_column: str | None,
        frame_rate: float,
        aggregation: str | None,
        **kwargs: Any,
    ) -> Any:
        options = (
            None
            if sightings is None
            else SightingOptions(
                sightings, gap, sighting_csv, sighting_column, time_column, frame_rate, aggregation
            )
        )
        return func(*args, sightings=options, **kwargs)

    from ._common import FiniteFloatRange  # noqa: PLC0415

    options = [
        click.option(
            "--aggregation",
            default=None,
            help="How a sighting's photos combine: centroid, prototype, max, mean, topK "
            "(default: the model's calibrated choice).",
        ),
        click.option(
            "--frame-rate",
            default=1.0,
            show_default=True,
            type=FiniteFloatRange(0.01, 60),
            help="Video frames kept per second (--sightings video).",
        ),
        click.option("--time-column", help="Capture times (ISO) in --sighting-csv."),
        click.option("--sighting-column", help="The sighting id column of --sighting-csv."),
        click.option(
            "--sighting-csv",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="CSV with a photo column and a sighting id column (or capture times).",
        ),
        click.option(
            "--gap",
            default="30s",
            show_default=True,
            help="--sightings time: a new sighting starts after this pause (e.g. 30s, 2m).",
        ),
        click.option(
            "--sightings",
            type=click.Choice(GROUPINGS),
            default=None,
            help="Identify sightings (photos of one animal) together: one folder each, "
            "bursts by capture time (right only when a burst follows one animal), a CSV "
            "column, or one video each. One record per sighting.",
        ),
    ]
    return with_options(wrapper, options)


def run_sightings(
    pipe: Pipeline,
    options: SightingOptions,
    inputs: list[InputFile],
    *,
    output: Path | None,
    resume: bool,
    threshold: float | None,
    batch_size: int,
    workers: int | None,
) -> list[SightingPrediction]:
    """Group, identify chunk by chunk (each written as it is made), print the table."""
    from ..results import ResultsWriter, completed_sources  # noqa: PLC0415

    sources, names = options.group(inputs)
    todo = list(sources)
    if resume and output is not None and output.exists():
        done = completed_sources(output)
        todo = [s for s in todo if s not in done]
        click.echo(
            f"resuming {output}: {len(sources) - len(todo)} of {len(sources)} sightings done"
        )
    out: list[SightingPrediction] = []
    writer = ResultsWriter(output, append=resume, sightings=True) if output is not None else None
    try:
        chunks = [todo[i : i + _CHUNK] for i in range(0, len(todo), _CHUNK)]
        for chunk in progress(chunks, len(chunks), "identifying sightings"):
            found = pipe.predict_sightings(
                {sid: sources[sid] for sid in chunk},
                batch_size=batch_size,
                num_workers=workers,
                aggregation=options.aggregation,
                threshold=threshold,
                photo_names={sid: names[sid] for sid in chunk},
            )
            for record in found:
                if writer is not None:
                    writer.write(record)
                out.append(record)
    finally:
        if writer is not None:
            writer.close()
    rows = [
        (
            s.sighting_id,
            f"{len(s.accepted_photos)}/{len(s.photos)}",
            verdict(s),
            *best_guess(s),
            s.species or "",
        )
        for s in out
    ]
    click.echo(table(rows, ["sighting", "photos", "verdict", "best match", "score", "species"]))
    counts = Counter(outcome(s) for s in out)
    lines = [
        f"\n{len(out)} sightings ({sum(len(s.photos) for s in out)} photos): "
        f"{counts['identified']} identified, {counts['new']} new individuals, "
        f"{counts['rejected']} rejected (no photo accepted)"
    ]
    if counts["unmatched"]:
        lines.append(f"{counts['unmatched']} sightings {UNMATCHED_NOTE}")
    if pipe.gallery is not None:
        thr = pipe.sighting_threshold if threshold is None else threshold
        source = (
            "--threshold" if threshold is not None else f"the model {pipe.identifier.config.name!r}"
        )
        agg = options.aggregation or pipe.sighting_aggregation
        lines.append(
            f"sighting policy: photos combined by {agg}; "
            + (
                f"new individual when the best scores under {thr:.3f} (from {source})"
                if thr is not None
                else "no sighting threshold (never new): the model has none; pass --threshold"
            )
        )
    lines.append(
        f"sightings from {options.grouping}"
        + (
            " (capture-time bursts: right only when a burst follows one animal)"
            if options.grouping == "time"
            else ""
        )
    )
    click.echo("\n".join(lines))
    return out
