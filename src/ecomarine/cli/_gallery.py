"""``ecomarine gallery build|add|info|list|show|remove|rename|merge-individuals|merge``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..index import INDEX_KINDS, IndexKind
from ..types import EmbeddingKind
from ._app import cli
from ._common import (
    catalog_columns_option,
    check_model,
    expand_inputs,
    fmt,
    kind_option,
    overwrite_option,
    progress_callback,
    refuse_existing,
    table,
)

if TYPE_CHECKING:
    import numpy as np

    from ..io import ImageSource
    from ..pipeline import DuplicatePolicy, Pipeline


@cli.group()
def gallery() -> None:
    """Build and maintain galleries of known individuals."""


_duplicates_option = click.option(
    "--duplicates",
    type=click.Choice(["skip", "error", "keep"]),
    default="skip",
    show_default=True,
    help="A photo whose content (SHA-256) is already in the gallery: skip it (counted), "
    "stop with an error, or keep it anyway.",
)


def _embed_catalog(
    pipe: Pipeline,
    csv_path: Path,
    images: Path | None,
    batch_size: int,
    columns: Mapping[str, str],
    duplicates: DuplicatePolicy,
    ray: tuple[str, str, int] | None = None,
) -> tuple[int, int]:
    """Enroll a catalogue CSV; return (photos added, duplicates skipped).

    ``ray`` is ``(address, model, actors)``: embed on a Ray cluster instead of here.
    """
    from ..catalog import read_catalog_csv  # noqa: PLC0415

    samples = read_catalog_csv(csv_path, images, columns=columns)
    embed = None
    if ray is not None:
        from ..distributed import embed_on_ray, ray_init  # noqa: PLC0415

        address, model, actors = ray
        ray_init(None if address == "local" else address)

        def embed(kept: list[ImageSource]) -> np.ndarray[Any, Any]:
            return embed_on_ray(
                [str(k) for k in kept], model, kind=pipe.embedding_kind,
                batch_size=batch_size, num_actors=actors,
            )  # fmt: skip

    with progress_callback(len(samples), "embedding") as advance:
        added = pipe.enroll(
            [s.path for s in samples],
            [s.individual_id for s in samples],
            [s.species for s in samples],
            [s.metadata() for s in samples],
            batch_size=batch_size,
            duplicates=duplicates,
            progress=advance,
            embed=embed,
        )
    return len(added), len(samples) - len(added)


def _skipped(n: int) -> str:
    if not n:
        return ""
    return f" ({n} duplicate photos skipped: already in the gallery; --duplicates keep adds them)"


@gallery.command("build")
@click.option(
    "--csv",
    "csv_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Columns image,individual_id[,species,encounter,date,latitude,longitude] "
    "(or your own names, mapped with --id-column/--image-column/--column).",
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
@click.option(
    "--ray",
    "ray_address",
    default=None,
    help='Embed on a Ray cluster (extra "ray"): its address, or "local".',
)
@click.option(
    "--ray-actors",
    default=1,
    show_default=True,
    type=click.IntRange(1, 4096),
    help="Actors (each holds the identifier) with --ray.",
)
@catalog_columns_option
@_duplicates_option
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
    ray_address: str | None,
    ray_actors: int,
    columns: dict[str, str],
    duplicates: DuplicatePolicy,
    overwrite: bool,
) -> None:
    """Embed a labelled catalogue into a new gallery."""
    from ..catalog import read_catalog_csv  # noqa: PLC0415
    from ..pipeline import Pipeline  # noqa: PLC0415

    refuse_existing(
        [out],
        overwrite,
        f"add photos to it with `ecomarine gallery add {out} --csv ...`, or pass --overwrite "
        "to replace it (its photos and threshold would be lost)",
    )
    check_model(model)
    read_catalog_csv(csv_path, images, columns=columns)  # every CSV problem before a model loads
    pipe = Pipeline.from_pretrained(model, gate=False, embedding_kind=kind)
    ray = None if ray_address is None else (ray_address, model, ray_actors)
    n, skipped = _embed_catalog(pipe, csv_path, images, batch_size, columns, duplicates, ray)
    assert pipe.gallery is not None
    pipe.gallery.use_index(index_kind)
    if calibrate:
        report = pipe.gallery.calibrate_new_individual()
        click.echo(
            f"calibrated new-individual threshold {report.threshold:.3f} (MAP@5 {report.map5:.3f} on {report.n_queries} leave-encounter-out queries)"
        )
    pipe.gallery.save(out)
    click.echo(
        f"gallery {out}: {n} photos of {len(pipe.gallery.individuals())} individuals{_skipped(skipped)}"
    )


@gallery.command("add")
@click.argument("gallery_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--csv", "csv_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--photos",
    multiple=True,
    help="Photos (files or folders) of ONE individual, e.g. a confirmed sighting; "
    "with --individual, instead of --csv. Repeatable.",
)
@click.option("--individual", help="The id the --photos are enrolled under.")
@click.option("--species", help="Species of the --photos.")
@click.option("--model", default="embedded", show_default=True)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@catalog_columns_option
@_duplicates_option
def add(
    gallery_dir: Path,
    csv_path: Path | None,
    images: Path | None,
    photos: tuple[str, ...],
    individual: str | None,
    species: str | None,
    model: str,
    batch_size: int,
    columns: dict[str, str],
    duplicates: DuplicatePolicy,
) -> None:
    """Add labelled photos (a CSV, or one individual's photos) to an existing gallery."""
    from ..catalog import read_catalog_csv  # noqa: PLC0415
    from ..gallery import Gallery  # noqa: PLC0415
    from ..pipeline import Pipeline  # noqa: PLC0415

    if (csv_path is None) == (not photos):
        raise click.UsageError("pass either --csv or --photos (with --individual)")
    if photos and not individual:
        raise click.BadParameter("--photos need the individual's id", param_hint="--individual")
    check_model(model)
    files = expand_inputs(photos) if photos else []
    if photos and not files:
        raise click.BadParameter("no image files found", param_hint="--photos")
    if csv_path is not None:
        read_catalog_csv(csv_path, images, columns=columns)
    with Gallery.update(gallery_dir) as existing:  # one lock across load, add and save
        pipe = Pipeline.from_pretrained(model, gate=False, embedding_kind=existing.embedding_kind)
        pipe.attach_gallery(existing)
        if csv_path is not None:
            n, skipped = _embed_catalog(pipe, csv_path, images, batch_size, columns, duplicates)
        else:
            with progress_callback(len(files), "embedding") as advance:
                added = pipe.enroll(
                    files,
                    [str(individual)] * len(files),
                    species,
                    [{"source": str(f)} for f in files],
                    batch_size=batch_size,
                    duplicates=duplicates,
                    progress=advance,
                )
            n, skipped = len(added), len(files) - len(added)
    click.echo(
        f"added {n} photos; gallery now {len(existing)} photos of "
        f"{len(existing.individuals())} individuals{_skipped(skipped)}"
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


@gallery.command("list")
@click.argument("gallery_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def list_individuals(gallery_dir: Path) -> None:
    """List every individual: photos, species, first and last date, encounters."""
    from ..gallery import Gallery  # noqa: PLC0415

    g = Gallery.load(gallery_dir)
    rows = [
        (
            s.individual_id,
            s.photos,
            s.species or "",
            s.first_date or "",
            s.last_date or "",
            s.encounters,
        )
        for s in g.summaries()
    ]
    click.echo(
        table(rows, ["individual", "photos", "species", "first seen", "last seen", "encounters"])
    )
    click.echo(f"\n{len(rows)} individuals, {len(g)} photos")


@gallery.command("show")
@click.argument("gallery_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("individual_id")
def show(gallery_dir: Path, individual_id: str) -> None:
    """Show the photos of one individual (image id, source, date, encounter)."""
    from ..gallery import Gallery  # noqa: PLC0415

    g = Gallery.load(gallery_dir)
    records = [r for r in g.records() if r["individual_id"] == individual_id]
    if not records:
        raise click.BadParameter(
            f"no individual {individual_id!r} in {gallery_dir}", param_hint="INDIVIDUAL_ID"
        )
    click.echo(
        f"{individual_id}: {len(records)} photos, species {g.species_of(individual_id) or '?'}\n"
    )
    click.echo(
        table(
            [
                (
                    r["image_id"],
                    r["metadata"].get("source", ""),
                    r["metadata"].get("date", ""),
                    r["metadata"].get("encounter", ""),
                    str(r["metadata"].get("sha256", ""))[:12],
                )
                for r in records
            ],
            ["image id", "source", "date", "encounter", "sha256"],
        )
    )


@gallery.command("remove")
@click.argument("gallery_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--individual", help="Remove every photo of this individual.")
@click.option("--image", "image_ids", multiple=True, help="Remove this image id (repeatable).")
@click.option(
    "--source",
    "sources",
    multiple=True,
    help="Remove the photo with this path or file name, as enrolled (repeatable).",
)
def remove(
    gallery_dir: Path, individual: str | None, image_ids: tuple[str, ...], sources: tuple[str, ...]
) -> None:
    """Remove an individual, or photos by image id or file name."""
    from ..gallery import Gallery  # noqa: PLC0415

    if sum(bool(x) for x in (individual is not None, image_ids, sources)) != 1:
        raise click.UsageError("pass exactly one of --individual, --image or --source")
    with Gallery.update(gallery_dir) as g:
        ids = list(image_ids) or (g.image_ids_for_sources(list(sources)) if sources else None)
        n = g.remove(individual_id=individual, image_ids=ids)
    click.echo(f"removed {n} photos; {len(g)} remain")


@gallery.command("calibrate")
@click.argument("gallery_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--dry-run", is_flag=True, help="Print the threshold without storing it in the gallery."
)
def calibrate(gallery_dir: Path, dry_run: bool) -> None:
    """Calibrate the gallery's new-individual threshold on itself (leave-encounter-out).

    Each encounter (or photo without one) is queried against the rest of the catalogue;
    a whale seen in no other encounter plays a new individual. The threshold with the
    best MAP@5 is stored with the gallery and overrides its model's (needed for models
    that ship none, such as the Hub's).
    """
    from ..gallery import Gallery  # noqa: PLC0415

    if dry_run:
        g = Gallery.load(gallery_dir)
        before = g.new_individual_threshold
        report = g.calibrate_new_individual(apply=False)
    else:
        with Gallery.update(gallery_dir) as g:
            before = g.new_individual_threshold
            report = g.calibrate_new_individual()
    click.echo(
        f"new-individual threshold {report.threshold:.3f} (MAP@5 {report.map5:.3f} on "
        f"{report.n_queries} leave-encounter-out queries; before: "
        f"{'none' if before is None else f'{before:.3f}'})"
        + (" - not stored (--dry-run)" if dry_run else f"; stored in {gallery_dir}")
    )


@gallery.command("rename")
@click.argument("gallery_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("old")
@click.argument("new")
def rename(gallery_dir: Path, old: str, new: str) -> None:
    """Rename individual OLD to NEW (refused if NEW exists: use merge-individuals)."""
    from ..gallery import Gallery  # noqa: PLC0415

    with Gallery.update(gallery_dir) as g:
        n = g.rename(old, new)
    click.echo(f"renamed {old} to {new} ({n} photos)")


@gallery.command("merge-individuals")
@click.argument("gallery_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("individual_ids", nargs=-1, required=True)
@click.option("--into", required=True, help="The id the merged individual keeps.")
def merge_individuals(gallery_dir: Path, individual_ids: tuple[str, ...], into: str) -> None:
    """Merge INDIVIDUAL_IDS into one animal (two ids found to be the same whale)."""
    from ..gallery import Gallery  # noqa: PLC0415

    with Gallery.update(gallery_dir) as g:
        n = g.merge(list(individual_ids), into=into)
    click.echo(f"merged {', '.join(individual_ids)} into {into} ({n} photos relabelled)")


@gallery.command("merge")
@click.argument("first", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("second", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@overwrite_option
def merge(first: Path, second: Path, out: Path, overwrite: bool) -> None:
    """Merge two catalogues built with the same model into a new gallery OUT."""
    from ..gallery import Gallery  # noqa: PLC0415

    refuse_existing([out], overwrite)
    combined = Gallery.load(first)
    report = combined.merge_from(Gallery.load(second))
    combined.save(out)
    click.echo(
        f"gallery {out}: {len(combined)} photos of {len(combined.individuals())} individuals "
        f"({report.added} added from {second})"
    )
    if report.duplicate_photos:
        click.echo(f"skipped {len(report.duplicate_photos)} photos present in both (same content)")
    for digest, ours, theirs in report.relabelled_conflicts:
        click.echo(f"conflict: photo {digest[:12]} is {ours} in {first} but {theirs} in {second}")
    if report.shared_individuals:
        shown = ", ".join(report.shared_individuals[:10])
        more = len(report.shared_individuals) - 10
        click.echo(
            f"{len(report.shared_individuals)} individual ids in both, now one animal each: "
            f"{shown}{f' (+{more} more)' if more > 0 else ''}"
        )
    for ind, ours, theirs in report.species_conflicts:
        click.echo(f"conflict: {ind} is {ours} in {first} but {theirs} in {second}")
    if report.renamed_image_ids:
        click.echo(f"{report.renamed_image_ids} clashing image ids were given new ones")


@gallery.command("rebuild")
@click.argument("gallery_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", default="embedded", show_default=True)
@click.option(
    "--images",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder the photos' recorded paths are relative to (the build's --images).",
)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096))
@overwrite_option
def rebuild(
    gallery_dir: Path,
    model: str,
    images: Path | None,
    out: Path,
    batch_size: int,
    overwrite: bool,
) -> None:
    """Re-embed a gallery's photos with MODEL into a new gallery OUT.

    For a model whose vectors changed (new weights, or another test-time setting): the
    same image ids, individuals, species and metadata; every photo is read again from
    its recorded path and checked against its recorded hash before anything is written.
    """
    from ..gallery import Gallery  # noqa: PLC0415
    from ..gallery_rebuild import rebuild_gallery, resolve_sources  # noqa: PLC0415
    from ..identifier import Identifier  # noqa: PLC0415

    refuse_existing([out], overwrite)
    check_model(model)
    old = Gallery.load(gallery_dir)
    resolve_sources(old, images)  # every missing or changed photo before a model loads
    ident = Identifier.from_pretrained(model)
    with progress_callback(len(old), "embedding") as advance:
        new = rebuild_gallery(old, ident, images=images, batch_size=batch_size, progress=advance)
    new.save(out)
    click.echo(
        f"gallery {out}: {len(new)} photos of {len(new.individuals())} individuals "
        f"re-embedded with {ident.config.name} (fingerprint {old.fingerprint or '?'} -> "
        f"{new.fingerprint})"
    )
    if old.new_individual_threshold is not None:
        click.echo(
            f"its threshold override {old.new_individual_threshold:.3f} was not carried over "
            f"(chosen on the old vectors): `ecomarine gallery calibrate {out}`"
        )
