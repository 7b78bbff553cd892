"""``ecomarine review`` (the local review app) and ``ecomarine report`` (a contact sheet)."""

from __future__ import annotations

from pathlib import Path

import click

from ._app import cli
from ._common import check_gallery_dir, check_model, overwrite_option, refuse_existing


def _gallery_dir(value: str) -> Path:
    check_gallery_dir(value)
    return Path(value)


_gallery_images = click.option(
    "--gallery-images",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder the gallery's photo paths are relative to (default: the current folder).",
)


@cli.command()
@click.argument("results", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--gallery", "gallery", required=True, help="The gallery folder to review against (and grow)."
)
@_gallery_images
@click.option(
    "--decisions",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Decisions file, appended to (default: RESULTS with .decisions.jsonl).",
)
@click.option(
    "--reviewer", default=None, help="Your name, recorded with each decision (default: $USER)."
)
@click.option("--model", default="embedded", show_default=True, help="The gallery's model.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(1, 65535))
@click.option("--no-browser", is_flag=True, help="Do not open a browser.")
def review(
    results: Path,
    gallery: str,
    gallery_images: Path | None,
    decisions: Path | None,
    reviewer: str | None,
    model: str,
    port: int,
    no_browser: bool,
) -> None:
    """Review a results file in the browser: confirm matches, create new individuals.

    Serves on 127.0.0.1 only. Each decision is appended to the decisions file (flushed to
    disk) and applied to the gallery; reopening continues where you stopped.
    """
    import getpass  # noqa: PLC0415
    import threading  # noqa: PLC0415
    import webbrowser  # noqa: PLC0415

    from ..review._app import ReviewSession, create_review_app  # noqa: PLC0415
    from ..serve._errors import RequestError  # noqa: PLC0415

    try:
        import uvicorn  # noqa: PLC0415
    except ImportError as exc:
        raise click.UsageError(
            'the review app needs the "serve" extra: pip install "ecomarine[serve]"'
        ) from exc
    folder = _gallery_dir(gallery)
    check_model(model)
    name = reviewer or getpass.getuser()
    log = decisions or results.with_suffix(".decisions.jsonl")
    try:
        session = ReviewSession(
            results, folder, log, name, gallery_images=gallery_images, model=model
        )
    except RequestError as exc:
        raise click.BadParameter(exc.detail, param_hint="--reviewer") from exc
    url = f"http://127.0.0.1:{port}/"
    click.echo(f"reviewing {len(session.items)} items as {name}; decisions in {log}; open {url}")
    if not no_browser:
        threading.Timer(1.0, webbrowser.open, [url]).start()
    uvicorn.run(create_review_app(session), host="127.0.0.1", port=port, log_level="warning")


@cli.command()
@click.argument("results", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--html",
    "html_out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The contact sheet to write.",
)
@click.option(
    "--gallery", "gallery", default=None, help="Gallery folder, for the candidates' photos."
)
@_gallery_images
@click.option("--title", default="ecomarine contact sheet", show_default=True)
@overwrite_option
def report(
    results: Path,
    html_out: Path,
    gallery: str | None,
    gallery_images: Path | None,
    title: str,
    overwrite: bool,
) -> None:
    """Write a self-contained HTML contact sheet: each query beside its candidates' photos."""
    from ..gallery import Gallery  # noqa: PLC0415
    from ..results import read_results  # noqa: PLC0415
    from ..review.report import contact_sheet  # noqa: PLC0415

    refuse_existing([html_out], overwrite)
    gal = None if gallery is None else Gallery.load(_gallery_dir(gallery))
    out = contact_sheet(
        read_results(results),
        html_out,
        gallery=gal,
        results_root=results.resolve().parent,
        gallery_root=(gallery_images or Path.cwd()).resolve(),
        title=title,
    )
    click.echo(f"wrote {out}")
