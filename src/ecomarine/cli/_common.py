"""Helpers shared by the CLI commands: inputs, outputs, progress, tables."""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .._atomic import atomic_write_text
from .._text import spreadsheet_safe
from ..types import EMBEDDING_KINDS, EmbeddingKind, Prediction, embedding_kind

if TYPE_CHECKING:
    from ..pipeline import GateChoice

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])

IMAGE_SUFFIXES = {
    ".jpg",
    ".jpeg",
    ".png",
    ".webp",
    ".tif",
    ".tiff",
    ".bmp",
    ".gif",
    ".heic",
    ".heif",
}


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses NaN and infinity (which compare as in range)."""

    name = "finite float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        out = super().convert(value, param, ctx)
        if not math.isfinite(out):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return out


def overwrite_option(func: _F) -> _F:
    """The ``--overwrite`` flag of every command that writes outputs."""
    option = click.option(
        "--overwrite",
        is_flag=True,
        help="Replace outputs that already exist (default: refuse, so that nothing is lost).",
    )
    return option(func)


def refuse_existing(outputs: Iterable[str | Path | None], overwrite: bool, hint: str = "") -> None:
    """Refuse outputs that exist (a file, or a folder with anything in it) unless asked.

    Called before any model loads or photo is read, so a run never ends by destroying
    earlier work.

    Raises:
        click.UsageError: Naming the first output that exists, and what to do instead.
    """
    if overwrite:
        return
    for out in outputs:
        if out is None:
            continue
        path = Path(out)
        if path.is_dir() and not any(path.iterdir()):
            continue  # an empty folder holds nothing to lose
        if path.exists() or path.is_symlink():
            raise click.UsageError(
                f"{path} already exists; {hint or 'pass --overwrite to replace it'}"
            )


def kind_option(
    help_text: str = "Which vectors: trained embedding or general features.",
) -> Callable[[_F], _F]:
    """The ``--kind`` option, typed as :data:`~ecomarine.types.EmbeddingKind`."""

    def convert(_ctx: click.Context, _param: click.Parameter, value: str) -> EmbeddingKind:
        return embedding_kind(value)

    return click.option(
        "--kind",
        type=click.Choice(EMBEDDING_KINDS),
        default="embedding",
        show_default=True,
        callback=convert,
        help=help_text,
    )


def gate_choice(value: str | None) -> GateChoice:
    """A ``--gate`` value as the pipeline takes it: ``none`` means no gate."""
    if value is not None and value.lower() == "none":
        return False
    return value


def expand_inputs(paths: Sequence[str]) -> list[Path]:
    """Files as given; folders searched recursively for images; globs expanded.

    Raises:
        click.BadParameter: When an argument matches nothing.
    """
    out: list[Path] = []
    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
            out += found
        elif p.exists():
            out.append(p)
        elif any(ch in arg for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=True))  # noqa: PTH207 - absolute globs
            if not matches:
                raise click.BadParameter(f"no files match {arg!r}")
            out += [m for m in matches if m.is_file()]
        else:
            raise click.BadParameter(f"{arg!r}: no such file or folder", param_hint="PATHS")
    return out


def progress(items: Iterable[_T], total: int | None, label: str) -> Iterator[_T]:
    """A progress bar on a terminal; silent otherwise."""
    if not sys.stderr.isatty():
        yield from items
        return
    with click.progressbar(items, length=total, label=label, file=sys.stderr) as bar:
        yield from bar


def verdict(p: Prediction) -> str:
    """A short human verdict for a prediction."""
    if p.rejection_reason:
        return f"rejected: {p.rejection_reason}"
    if p.is_new_individual:
        return "NEW individual"
    if p.individual_id:
        return p.individual_id
    return "cetacean (no catalogue)"


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_predictions(path: Path, predictions: Sequence[Prediction]) -> None:
    """Write ``.jsonl`` (full records) or ``.csv`` (flat summary), atomically."""
    if path.suffix.lower() == ".jsonl":
        text = "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in predictions)
    elif path.suffix.lower() == ".csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(
            [
                "source",
                "is_cetacean",
                "gate_score",
                "individual_id",
                "is_new_individual",
                "score",
                "species",
                "candidates",
                "rejection_reason",
                "sha256",
            ]
        )
        for p in predictions:
            best = p.candidates[0].score if p.candidates else None
            row = [
                p.source,
                p.is_cetacean,
                p.gate_score,
                p.individual_id,
                p.is_new_individual,
                best,
                p.species,
                " ".join(m.individual_id for m in p.candidates),
                p.rejection_reason or "",
                p.sha256 or "",
            ]
            writer.writerow([spreadsheet_safe(cell) for cell in row])
        text = buf.getvalue()
    else:
        raise click.BadParameter(f"{path}: output must end in .csv or .jsonl")
    atomic_write_text(path, text)


def fmt(x: float | None, digits: int = 3) -> str:
    """Format an optional float."""
    return "" if x is None else f"{x:.{digits}f}"
