"""Helpers shared by the CLI commands: inputs, outputs, progress, tables."""

from __future__ import annotations

import contextlib
import functools
import glob
import logging
import math
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..types import (
    EMBEDDING_KINDS,
    EmbeddingKind,
    Prediction,
    SightingPrediction,
    embedding_kind,
    rejection_text,
)

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


@dataclass(frozen=True)
class InputFile:
    """A photo found from the command line: its path, and its name under its input root."""

    path: Path
    name: str
    root: Path | None


def expand_named_inputs(
    paths: Sequence[str], suffixes: Collection[str] = IMAGE_SUFFIXES
) -> list[InputFile]:
    """Files as given; folders searched recursively for images (``suffixes``); globs expanded.

    Photos found in a folder are named by their path under that folder
    (``day1/IMG_0001.jpg``), so photos with the same file name stay apart.

    Raises:
        click.BadParameter: When an argument matches nothing.
    """
    out: list[InputFile] = []
    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
            out += [InputFile(f, f.relative_to(p).as_posix(), p) for f in found]
        elif p.exists():
            out.append(InputFile(p, str(p), None))
        elif any(ch in arg for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=True))  # noqa: PTH207 - absolute globs
            if not matches:
                raise click.BadParameter(f"no files match {arg!r}")
            out += [InputFile(m, str(m), None) for m in matches if m.is_file()]
        else:
            raise click.BadParameter(f"{arg!r}: no such file or folder", param_hint="PATHS")
    return out


def expand_inputs(paths: Sequence[str]) -> list[Path]:
    """The paths of :func:`expand_named_inputs`."""
    return [f.path for f in expand_named_inputs(paths)]


def progress(items: Iterable[_T], total: int | None, label: str) -> Iterator[_T]:
    """A progress bar on a terminal; silent otherwise."""
    if not sys.stderr.isatty():
        yield from items
        return
    with click.progressbar(items, length=total, label=label, file=sys.stderr) as bar:
        yield from bar


@contextlib.contextmanager
def progress_callback(total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A progress bar advanced by calling the yielded function with a count.

    Shown on a terminal only (quiet in logs and CI); ``-v`` logs what is being done.
    """
    logging.getLogger("ecomarine.cli").info("%s: %d photos", label, total)
    if not sys.stderr.isatty():
        yield lambda _n: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update


def verdict(p: Prediction | SightingPrediction) -> str:
    """A short human verdict (the open-set decision, not the best guess)."""
    if p.rejection_reason:
        return rejection_text(p)
    if p.is_new_individual:
        return "NEW individual"
    if p.individual_id:
        return p.individual_id
    if p.candidate_source == "head":
        return "no catalogue (model hints)"
    return "cetacean (no catalogue)"


def outcome(p: Prediction | SightingPrediction) -> str:
    """How a photo or sighting counts in a summary: rejected, new, identified, unmatched."""
    if p.rejection_reason:
        return "rejected"
    if p.is_new_individual:
        return "new"
    return "identified" if p.individual_id else "unmatched"


UNMATCHED_NOTE = (
    "not matched to any catalogue (no --gallery); "
    "'(head)' candidates are individuals the model was trained on, not your animals"
)


def best_guess(p: Prediction | SightingPrediction) -> tuple[str, str]:
    """The best candidate and its score, marked when it is only a hint of the model's head."""
    if not p.candidates:
        return "", ""
    best = p.candidates[0]
    name = f"{best.individual_id} (head)" if p.candidate_source == "head" else best.individual_id
    return name, fmt(best.score)


def parse_assignments(values: Sequence[str], what: str) -> dict[str, str]:
    """``NAME=VALUE`` options as a dict.

    Raises:
        click.BadParameter: For an entry without ``=`` or a name given twice.
    """
    out: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE", param_hint=what)
        if name.strip() in out:
            raise click.BadParameter(f"{name.strip()!r} given twice", param_hint=what)
        out[name.strip()] = value.strip()
    return out


def with_options(func: _F, options: Sequence[Callable[[Any], Any]]) -> _F:
    """``func`` decorated by click ``options``, listed bottom-up (the last shows first)."""
    decorated: Any = func
    for option in options:
        decorated = option(decorated)
    return decorated  # type: ignore[no-any-return]


def catalog_columns_option(func: _F) -> _F:
    """``--image-column``, ``--id-column`` and ``--column FIELD=COLUMN``, as ``columns``.

    The command receives ``columns``: the catalogue field -> the CSV's column name.
    """

    @functools.wraps(func)
    def wrapper(
        *args: Any,
        image_column: str | None,
        id_column: str | None,
        column: tuple[str, ...],
        **kwargs: Any,
    ) -> Any:
        from ..catalog import check_column_map  # noqa: PLC0415

        columns = parse_assignments(column, "--column")
        for field, value in (("image", image_column), ("individual_id", id_column)):
            if value is not None:
                if field in columns:
                    raise click.BadParameter(f"{field} mapped twice", param_hint="--column")
                columns[field] = value
        return func(*args, columns=check_column_map(columns), **kwargs)

    options = [
        click.option(
            "--column",
            multiple=True,
            metavar="FIELD=COLUMN",
            help="Read FIELD (image, individual_id, species, encounter, date, latitude, "
            "longitude) from your CSV's COLUMN; repeatable.",
        ),
        click.option("--id-column", help="Your CSV's column of individual ids."),
        click.option("--image-column", help="Your CSV's column of image paths."),
    ]
    return with_options(wrapper, options)  # type: ignore[return-value]


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(x: float | None, digits: int = 3) -> str:
    """Format an optional float."""
    return "" if x is None else f"{x:.{digits}f}"


def check_gallery_dir(value: str | Path | None, advice: str = "") -> None:
    """Refuse a ``--gallery`` that is given but holds no gallery, before anything loads.

    Raises:
        click.BadParameter: Naming the folder (and ``advice``, if any).
    """
    if value is not None and not (Path(value) / "gallery.json").is_file():
        raise click.BadParameter(
            f"{value}: not a gallery (no gallery.json){advice}", param_hint="--gallery"
        )


#: The ``--model`` and ``--gate`` of the commands that load a whole pipeline.
pipeline_model_option = click.option(
    "--model",
    default="embedded",
    show_default=True,
    help='"embedded", a model/pipeline folder, or a Hub repo id.',
)
gate_override_option = click.option(
    "--gate",
    "gate_name",
    default=None,
    help='Gate override: "embedded", a folder, a repo id, or "none".',
)


def check_model(model: str, param_hint: str = "--model") -> None:
    """Refuse a model argument that names nothing, before anything loads.

    Raises:
        click.BadParameter: For a folder without a model in it, or a name that is
            neither a bundled model, a folder, nor a Hub repository id.
    """
    from .._pretrained import BUNDLED, resolve_source  # noqa: PLC0415
    from ..errors import WeightsNotFoundError  # noqa: PLC0415
    from ..hub import HubOptions  # noqa: PLC0415
    from ..legacy import CHECKPOINT_NAME  # noqa: PLC0415

    if model in BUNDLED:
        return
    try:
        location = resolve_source(model, HubOptions())
    except WeightsNotFoundError as exc:
        raise click.BadParameter(str(exc), param_hint=param_hint) from exc
    folder = getattr(location, "local_dir", None)
    if folder is not None and not any(
        (Path(folder) / name).is_file()
        for name in ("config.json", "pipeline.json", "open_clip_config.json", CHECKPOINT_NAME)
    ):
        raise click.BadParameter(
            f"{folder}: not a model folder (no config.json, pipeline.json, "
            f"open_clip_config.json or {CHECKPOINT_NAME})",
            param_hint=param_hint,
        )
