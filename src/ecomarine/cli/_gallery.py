"""``ecomarine gallery build|add|info|remove``."""

from __future__ import annotations

from pathlib import Path

import click

from ..index import INDEX_KINDS, IndexKind
from ..types import EmbeddingKind
from ._app import cli
from ._common import fmt, kind_option, overwrite_option, refuse_existing, table


@cli.group()
def gallery() -> None:
    """Build and maintain galleries of known individuals."""


def _embed_catalog(pipe: object, csv_path: Path, images: Path | None, batch_size: int) -> int:
    from ..catalog import read_catalog_csv  # noqa: PLC0415
    from ..pipeline import Pipeline  # noqa: PLC0415

    assert isinstance(pipe, Pipeline)
    samples = read_catalog_csv(csv_path, images)
    species = [s.species for s in samples]
    pipe.enroll(
        [s.path for s in samples],
        [s.individual_id for s in samples],
        species,
        [s.metadata() for s in samples],
        batch_size=batch_size,
    )
    return len(samples)


@gallery.command("build")
@click.option(
    "--csv",
    "csv_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Columns image,individual_id[,species,encounter,date,latitude,longitude].",
)
@click.option(
    "--images",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder the image paths are relative to.",
)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", default="embedded", show_default=True)
@kind_option()
@click.option(
    "--calibrate/--no-calibrate",
    default=False,
    help="Set the open-set threshold by leave-encounter-out.",
)
@click.option(
    "--index",
    "index_kind",
    type=click.Choice(INDEX_KINDS),
    default="flat",
    show_default=True,
    help="Search index: exact, or approximate for large catalogues (needs faiss).",
)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@overwrite_option
def build(
    csv_path: Path,
    images: Path | None,
    out: Path,
    model: str,
    kind: EmbeddingKind,
    calibrate: bool,
    index_kind: IndexKind,
    batch_size: int,
    overwrite: bool,
) -> None:
    """Embed a labelled catalogue into a new gallery."""
    from ..pipeline import Pipeline  # noqa: PLC0415

    refuse_existing(
        [out],
        overwrite,
        f"add photos to it with `ecomarine gallery add {out} --csv ...`, or pass --overwrite "
        "to replace it (its photos and threshold would be lost)",
    )
    pipe = Pipeline.from_pretrained(model, gate=False, embedding_kind=kind)
    n = _embed_catalog(pipe, csv_path, images, batch_size)
    assert pipe.gallery is not None
    pipe.gallery.use_index(index_kind)
    if calibrate:
        report = pipe.gallery.calibrate_new_individual()
        click.echo(
            f"calibrated new-individual threshold {report.threshold:.3f} (MAP@5 {report.map5:.3f} on {report.n_queries} leave-encounter-out queries)"
        )
    pipe.gallery.save(out)
    click.echo(f"gallery {out}: {n} photos of {len(pipe.gallery.individuals())} individuals")


@gallery.command("add")
@click.argument("gallery_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--csv", "csv_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", default="embedded", show_default=True)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
def add(
    gallery_dir: Path, csv_path: Path, images: Path | None, model: str, batch_size: int
) -> None:
    """Add labelled photos to an existing gallery (same model required)."""
    from ..gallery import Gallery  # noqa: PLC0415
    from ..pipeline import Pipeline  # noqa: PLC0415

    with Gallery.update(gallery_dir) as existing:  # one lock across load, add and save
        pipe = Pipeline.from_pretrained(model, gate=False, embedding_kind=existing.embedding_kind)
        pipe.attach_gallery(existing)
        n = _embed_catalog(pipe, csv_path, images, batch_size)
    click.echo(
        f"added {n} photos; gallery now {len(existing)} photos of {len(existing.individuals())} individuals"
    )


@gallery.command("info")
@click.argument("gallery_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def info(gallery_dir: Path) -> None:
    """Describe a gallery."""
    from collections import Counter  # noqa: PLC0415

    from ..gallery import Gallery  # noqa: PLC0415

    g = Gallery.load(gallery_dir)
    per = Counter(r["individual_id"] for r in g.records())
    species = Counter(r["species"] or "?" for r in g.records())
    click.echo(
        table(
            [
                ("photos", len(g)),
                ("individuals", len(per)),
                ("species", ", ".join(f"{k} ({v})" for k, v in species.most_common())),
                ("embedding", f"{g.embedding_kind}, dim {g.dim}"),
                ("index", g.index_kind),
                ("model", g.model_name or "?"),
                ("fingerprint", g.fingerprint or "?"),
                (
                    "new-individual threshold",
                    fmt(g.new_individual_threshold)
                    if g.new_individual_threshold is not None
                    else "the model's (no override)",
                ),
                ("most photographed", ", ".join(f"{k} ({v})" for k, v in per.most_common(5))),
            ],
            ["property", "value"],
        )
    )


@gallery.command("remove")
@click.argument("gallery_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--individual", help="Remove every photo of this individual.")
@click.option("--image", "image_ids", multiple=True, help="Remove this image id (repeatable).")
def remove(gallery_dir: Path, individual: str | None, image_ids: tuple[str, ...]) -> None:
    """Remove an individual or specific images."""
    from ..gallery import Gallery  # noqa: PLC0415

    if (individual is None) == (not image_ids):
        raise click.UsageError("pass exactly one of --individual or --image")
    with Gallery.update(gallery_dir) as g:
        n = g.remove(individual_id=individual, image_ids=list(image_ids) if image_ids else None)
    click.echo(f"removed {n} photos; {len(g)} remain")
