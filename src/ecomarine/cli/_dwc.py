"""``ecomarine export-dwc``, and the Darwin Core options it shares with ``identify``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..review._decisions import review_key
from ._app import cli
from ._common import overwrite_option, parse_assignments, refuse_existing, with_options

if TYPE_CHECKING:
    from ..darwin_core import DatasetMetadata, HumanReview
    from ..results import Record

_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True)
class DwcSettings:
    """What the Darwin Core options asked for, checked before any photo is read."""

    license: str | None
    title: str | None = None
    dataset_id: str | None = None
    publisher: str | None = None
    recorded_by: str | None = None
    institution_code: str | None = None
    media_base_url: str | None = None
    defaults: dict[str, str] = field(default_factory=dict)
    per_image: dict[str, dict[str, str]] = field(default_factory=dict)

    def check(self) -> None:
        """Refuse a missing or unacceptable licence and bad terms, up front.

        Raises:
            click.BadParameter: Naming the option.
        """
        from ..darwin_core import to_occurrences  # noqa: PLC0415
        from ..errors import DataError  # noqa: PLC0415

        try:
            self.metadata().license_uri()  # None or a licence GBIF does not take
        except DataError as exc:
            raise click.BadParameter(str(exc), param_hint="--license") from exc
        try:
            to_occurrences([], dataset=self.metadata(), defaults=self.defaults)
        except DataError as exc:
            raise click.BadParameter(str(exc), param_hint="--dwc-default") from exc
        if self.media_base_url is not None and not self.media_base_url.startswith(
            ("https://", "http://")
        ):
            raise click.BadParameter(
                f"{self.media_base_url!r}: must start with https://", param_hint="--media-base-url"
            )

    def metadata(self) -> DatasetMetadata:
        """The :class:`~ecomarine.darwin_core.DatasetMetadata` these options describe."""
        from ..darwin_core import DatasetMetadata  # noqa: PLC0415

        base = DatasetMetadata()
        return DatasetMetadata(
            title=self.title or base.title,
            publisher=self.publisher or base.publisher,
            license=self.license,
            recorded_by=self.recorded_by,
            institution_code=self.institution_code,
            dataset_id=self.dataset_id,
        )

    def write(
        self,
        out: Path,
        preds: Sequence[Record],
        *,
        include_rejected: bool = False,
        media_root: Path | None = None,
        reviews: Mapping[str, HumanReview] | None = None,
    ) -> int:
        """Write the archive; return how many occurrences it holds."""
        from ..darwin_core import write_dwca  # noqa: PLC0415

        write_dwca(
            out,
            preds,
            self.metadata(),
            defaults=self.defaults,
            per_image=self.per_image,
            include_rejected=include_rejected,
            media_base_url=self.media_base_url,
            media_root=media_root,
            reviews=reviews,
        )
        dropped = {k for k, r in (reviews or {}).items() if r.action == "not_cetacean"}
        return sum(
            1
            for p in preds
            if (include_rejected or not p.rejection_reason) and review_key(p) not in dropped
        )


def dwc_options(func: _F) -> _F:
    """The Darwin Core options, handed to the command as one ``dwc: DwcSettings``."""

    @functools.wraps(func)
    def wrapper(
        *args: Any,
        license_: str | None,
        dataset_title: str | None,
        dataset_id: str | None,
        publisher: str | None,
        recorded_by: str | None,
        institution_code: str | None,
        media_base_url: str | None,
        sidecar: Path | None,
        dwc_default: tuple[str, ...],
        **kwargs: Any,
    ) -> Any:
        from ..darwin_core import read_sidecar  # noqa: PLC0415

        settings = DwcSettings(
            license=license_,
            title=dataset_title,
            dataset_id=dataset_id,
            publisher=publisher,
            recorded_by=recorded_by,
            institution_code=institution_code,
            media_base_url=media_base_url,
            defaults=parse_assignments(dwc_default, "--dwc-default"),
            per_image=read_sidecar(sidecar) if sidecar is not None else {},
        )
        return func(*args, dwc=settings, **kwargs)

    options = [
        click.option(
            "--dwc-default",
            multiple=True,
            metavar="TERM=VALUE",
            help="A Darwin Core value for every record of this survey (e.g. "
            "locality=Cook Inlet); repeatable.",
        ),
        click.option(
            "--sidecar",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="CSV of per-photo Darwin Core values: a 'photo' column (path, path under "
            "the input folder, or file name) and term columns (eventDate, decimalLatitude, "
            "decimalLongitude, locality, recordedBy, ...). They win over EXIF and defaults.",
        ),
        click.option(
            "--media-base-url",
            help="Public URL the photos are published under; media links become this URL "
            "plus each photo's path under the input folder (GBIF shows only public URLs).",
        ),
        click.option("--institution-code", default=None),
        click.option("--recorded-by", default=None, help="Default recordedBy."),
        click.option("--publisher", default=None),
        click.option(
            "--dataset-id",
            default=None,
            help="Dataset part of the stable occurrence ids (default: from the title); "
            "keep it fixed across re-exports.",
        ),
        click.option("--dataset-title", default=None),
        click.option(
            "--license",
            "license_",
            default=None,
            help="Licence of the records, required for an archive: CC0-1.0, CC-BY-4.0 or "
            "CC-BY-NC-4.0 (the three GBIF accepts).",
        ),
    ]
    return with_options(wrapper, options)  # type: ignore[return-value]


@cli.command("export-dwc")
@click.argument("results", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The .zip to write.",
)
@click.option(
    "--media-root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder the photo paths are made relative to for --media-base-url.",
)
@click.option("--include-rejected", is_flag=True)
@click.option(
    "--decisions",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A review's decisions file (`ecomarine review`): confirmed ids become "
    '"verified by human" identifications, photos judged not cetaceans are left out.',
)
@dwc_options
@overwrite_option
def export_dwc(
    results: Path,
    out: Path,
    media_root: Path | None,
    include_rejected: bool,
    decisions: Path | None,
    dwc: DwcSettings,
    overwrite: bool,
) -> None:
    """Turn RESULTS (.jsonl or .csv from `ecomarine identify --output`) into a DwC-A for GBIF."""
    from ..results import read_results  # noqa: PLC0415

    if out.suffix.lower() != ".zip":
        raise click.BadParameter(f"{out}: must end in .zip", param_hint="--out")
    refuse_existing([out], overwrite)
    dwc.check()
    preds = read_results(results)
    reviews = None
    if decisions is not None:
        from ..review import DecisionLog, human_reviews  # noqa: PLC0415

        reviews = human_reviews(DecisionLog(decisions))
    n = dwc.write(
        out, preds, include_rejected=include_rejected, media_root=media_root, reviews=reviews
    )
    click.echo(f"wrote {out} ({n} occurrences, licence {dwc.metadata().license_uri()})")
