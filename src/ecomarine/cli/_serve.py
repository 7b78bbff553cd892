"""``ecomarine serve``: the pipeline as an HTTP service."""

from __future__ import annotations

from pathlib import Path

import click

from ._app import cli
from ._common import (
    check_gallery_dir,
    check_model,
    gate_choice,
    gate_override_option,
    pipeline_model_option,
)


def _read_token(path: Path) -> str:
    if not path.is_file():
        raise click.BadParameter(f"{path}: not a file", param_hint="--token-file")
    if path.stat().st_size > 4096:
        raise click.BadParameter(f"{path}: a token file holds one line", param_hint="--token-file")
    token = path.read_text(encoding="utf-8", errors="strict").strip()
    if len(token) < 16 or any(c.isspace() for c in token):
        raise click.BadParameter(
            f"{path}: the token must be one word of at least 16 characters",
            param_hint="--token-file",
        )
    return token


@cli.command()
@pipeline_model_option
@click.option(
    "--gallery",
    "gallery_dir",
    type=click.Path(file_okay=False),
    help="Gallery folder: searched, and enrolled into by POST /v1/individuals/{id}/photos.",
)
@gate_override_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the bearer token clients must send (required beyond loopback).",
)
@click.option(
    "--max-batch",
    default=32,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Photos per network pass (requests are batched together).",
)
@click.option(
    "--max-wait-ms",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0, 1000),
    help="How long a photo waits for company before its batch runs.",
)
@click.option(
    "--max-upload-mb",
    default=64,
    show_default=True,
    type=click.IntRange(1, 4096),
    help="Largest request body.",
)
@click.option(
    "--max-files",
    default=256,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Most photos per request (files or ZIP entries).",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 1),
    help="Server processes (one: batching happens inside it).",
)
def serve(
    model: str,
    gallery_dir: str | None,
    gate_name: str | None,
    host: str,
    port: int,
    token_file: Path | None,
    max_batch: int,
    max_wait_ms: float,
    max_upload_mb: int,
    max_files: int,
    workers: int,
) -> None:
    """Serve identification over HTTP (extra "serve"): see /docs on the running service.

    Binds to 127.0.0.1 unless told otherwise; any other address requires --token-file.
    """
    from ..serve import ServeConfig, is_loopback  # noqa: PLC0415
    from ..serve import serve as run  # noqa: PLC0415

    if not is_loopback(host) and token_file is None:
        raise click.BadParameter(
            f"binding to {host} exposes the service to other machines; give --token-file",
            param_hint="--host",
        )
    token = None if token_file is None else _read_token(token_file)
    check_gallery_dir(gallery_dir, "; create one with `ecomarine gallery build`")
    check_model(model)
    config = ServeConfig(
        token=token,
        gallery_dir=gallery_dir,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_upload_bytes=max_upload_mb * 1024 * 1024,
        max_files=max_files,
    )
    from ..pipeline import Pipeline  # noqa: PLC0415

    pipe = Pipeline.from_pretrained(model, gallery=gallery_dir, gate=gate_choice(gate_name))
    run(pipe, config, host=host, port=port, workers=workers)
