"""A season of photos on a Ray cluster (optional extra ``ray``).

:func:`identify_dataset` streams photos through Ray Data: reading tasks fetch each photo's
bytes (local paths or anything pyarrow's filesystems reach), an actor pool holds the
pipeline (each actor loads the model, gate and gallery once; one GPU per actor where the
cluster has GPUs) and predicts batches, and the rows -- the CLI's CSV columns, typed --
are written as Parquet or JSON lines. A photo that cannot be read is a row with its
``rejection_reason``, never a failed job; a rerun skips photos already written.

No scheduler is written here: Ray does the scheduling, retries and streaming.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from .errors import ConfigError
from .results import CSV_COLUMNS, flat_record
from .types import Prediction

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
    import ray.data

    from .types import EmbeddingKind

__all__ = ["FORMATS", "done_paths", "embed_on_ray", "identify_dataset", "ray_init", "row_schema"]

logger = logging.getLogger(__name__)

#: Output formats.
FORMATS: Final = ("parquet", "jsonl")
_BOOLS = {"is_cetacean", "is_new_individual"}
_READ_CPUS = 0.5  # reading photos is I/O: a reading task reserves half a CPU


def _actor_cpus(resources: dict[str, float], num_actors: int) -> float:
    """CPUs per actor: the cluster's, less what the reading tasks keep, shared out.

    Ray gives an actor one CPU (and one PyTorch thread) unless told otherwise; the reading
    tasks must keep a little, or the actors would starve them.
    """
    spare = float(resources.get("CPU", 1)) - _READ_CPUS
    return max(_READ_CPUS, spare / num_actors)


def _use_threads(cpus: float) -> int:
    """In an actor: PyTorch (and decoding) threads for the actor's CPUs."""
    import torch  # noqa: PLC0415 - in the actor's process

    threads = max(1, round(cpus))
    torch.set_num_threads(threads)
    return threads


_NUMBERS = {"gate_score", "score", "species_score", "new_individual_threshold", "p_known", "alpha"}


def _ray() -> Any:
    try:
        import ray  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise ConfigError(
            'distributed runs need the "ray" extra: pip install "ecomarine[ray]"'
        ) from exc
    return ray


def ray_init(address: str | None = None, **kwargs: Any) -> None:
    """Connect to a Ray cluster (``address``), or start a local one (``None``), once.

    A local cluster listens on 127.0.0.1 only and starts no dashboard.
    """
    ray = _ray()
    if ray.is_initialized():
        return
    if address is None:
        kwargs = {"include_dashboard": False, "_node_ip_address": "127.0.0.1", **kwargs}
    ray.init(address=address, log_to_driver=False, **kwargs)


def row_schema() -> pa.Schema:
    """The output's columns: ``path``, then the CLI's CSV columns (typed)."""
    import pyarrow as pa  # noqa: PLC0415 - comes with ray[data]

    def kind(name: str) -> pa.DataType:
        if name in _BOOLS:
            return pa.bool_()
        return pa.float64() if name in _NUMBERS else pa.string()

    return pa.schema([("path", pa.string()), *[(c, kind(c)) for c in CSV_COLUMNS]])


def done_paths(output: str | os.PathLike[str]) -> set[str]:
    """Photos already written under ``output`` (what a rerun skips)."""
    folder = Path(output)
    if not folder.is_dir():
        return set()
    import pyarrow.dataset as pads  # noqa: PLC0415

    done: set[str] = set()
    for fmt, pattern in (("parquet", "*.parquet"), ("json", "*.json*")):
        files = sorted(str(p) for p in folder.glob(pattern) if p.stat().st_size > 0)
        if files:
            table = pads.dataset(files, format=fmt).to_table(columns=["path"])
            done.update(str(x) for x in table.column("path").to_pylist())
    return done


def _read(batch: dict[str, Any]) -> dict[str, Any]:
    """A reading task: each photo's bytes, or why it could not be read."""
    import pyarrow.fs as pafs  # noqa: PLC0415

    data, errors = [], []
    for path in batch["path"]:
        try:
            fs, inner = (
                pafs.FileSystem.from_uri(path)
                if "://" in path
                else (pafs.LocalFileSystem(), str(Path(path).absolute()))
            )
            with fs.open_input_stream(inner) as fh:
                data.append(fh.read())
            errors.append("")
        except (OSError, ValueError) as exc:  # a missing or unreadable photo is a row
            data.append(b"")
            errors.append(f"{type(exc).__name__}: {exc}")
    return {"path": list(batch["path"]), "data": data, "error": errors}


class _Predictor:
    """An actor: loads the pipeline (and gallery) once, predicts each batch it is given."""

    def __init__(self, model: str, gallery: str | None, batch_size: int, cpus: float) -> None:
        from .pipeline import Pipeline  # noqa: PLC0415 - in the actor's process

        self.threads = _use_threads(cpus)
        self.pipeline = Pipeline.from_pretrained(model, gallery=gallery)
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        import pyarrow as pa  # noqa: PLC0415

        paths = [str(p) for p in batch["path"]]
        readable = [i for i, e in enumerate(batch["error"]) if not e]
        preds = list(
            self.pipeline.predict_many(
                [bytes(batch["data"][i]) for i in readable],
                batch_size=self.batch_size,
                num_workers=self.threads,
            )
        )
        by_row = dict(zip(readable, preds, strict=True))
        rows = []
        for i, path in enumerate(paths):
            pred = by_row.get(i)
            if pred is None:
                pred = Prediction(
                    source=path,
                    is_cetacean=False,
                    gate_score=None,
                    rejection_reason="unreadable_image",
                    error=str(batch["error"][i]),
                    **self.pipeline.model_fields,
                )
            else:
                pred = dataclasses.replace(pred, source=path)
            rows.append({"path": path, **flat_record(pred)})
        return pa.Table.from_pylist(rows, schema=row_schema())


def identify_dataset(
    paths_or_dataset: Sequence[str | os.PathLike[str]] | ray.data.Dataset,
    pipeline_dir: str = "embedded",
    gallery_dir: str | os.PathLike[str] | None = None,
    *,
    output: str | os.PathLike[str],
    output_format: str = "parquet",
    num_actors: int = 1,
    batch_size: int = 32,
    num_gpus_per_actor: float | None = None,
    num_cpus_per_actor: float | None = None,
    skip_done: bool = True,
) -> ray.data.Dataset:
    """Identify photos on the current Ray cluster; write one row per photo under ``output``.

    Call :func:`ray_init` (or ``ray.init``) first to choose the cluster; without it a local
    one starts, on 127.0.0.1.

    Args:
        paths_or_dataset: Photo paths or URIs (``s3://…``, ``gs://…``: anything pyarrow
            reads), or a Ray Dataset with a ``path`` column.
        pipeline_dir: The model: ``"embedded"``, a model or pipeline folder, or a Hub id
            (each actor loads it once; it must be reachable from every node).
        gallery_dir: The gallery to search (loaded once per actor).
        output: The folder the rows are written to (files are added, never replaced).
        output_format: ``"parquet"`` or ``"jsonl"``.
        num_actors: Actors in the pool, each holding a pipeline.
        batch_size: Photos per actor call (and per network pass).
        num_gpus_per_actor: GPUs per actor (default: 1 when the cluster has GPUs, else 0).
        num_cpus_per_actor: CPUs per actor (default: the cluster's CPUs shared among the
            actors): the actor's decode threads and PyTorch threads use that many.
        skip_done: Leave out photos already written under ``output`` (a rerun resumes).

    Returns:
        The dataset that was written (rows: ``path`` and the CLI's CSV columns), for
        further processing; it has already been executed.

    Raises:
        ConfigError: Without Ray, or with a bad format, actor count or batch size.
    """
    rt = _ray()
    if output_format not in FORMATS:
        raise ConfigError(f"output_format must be one of {FORMATS}, got {output_format!r}")
    if num_actors < 1 or batch_size < 1:
        raise ConfigError("num_actors and batch_size must be at least 1")
    ray_init()
    if isinstance(paths_or_dataset, rt.data.Dataset):
        ds = paths_or_dataset.select_columns(["path"])
        if skip_done:
            done = done_paths(output)
            ds = ds.filter(lambda row: row["path"] not in done)
    else:
        paths = [str(p) for p in paths_or_dataset]
        done = done_paths(output) if skip_done else set()
        todo = [p for p in paths if p not in done]
        logger.info("%d photos, %d already done", len(paths), len(paths) - len(todo))
        if not todo:
            return cast("ray.data.Dataset", rt.data.from_items([]))
        ds = rt.data.from_items([{"path": p} for p in todo])
    resources = rt.cluster_resources()
    if num_gpus_per_actor is None:
        num_gpus_per_actor = 1.0 if resources.get("GPU", 0) >= num_actors else 0.0
    if num_cpus_per_actor is None:
        num_cpus_per_actor = _actor_cpus(resources, num_actors)
    read = ds.map_batches(_read, batch_size=batch_size, num_cpus=_READ_CPUS)
    rows = read.map_batches(
        _Predictor,
        fn_constructor_args=(
            pipeline_dir,
            None if gallery_dir is None else str(gallery_dir),
            batch_size,
            num_cpus_per_actor,
        ),
        batch_size=batch_size,
        concurrency=num_actors,
        num_gpus=num_gpus_per_actor,
        num_cpus=num_cpus_per_actor,
    )
    rows = rows.materialize()
    folder = str(Path(output))
    if output_format == "parquet":
        rows.write_parquet(folder)
    else:
        rows.write_json(folder)
    return cast("ray.data.Dataset", rows)


class _Embedder:
    """An actor: loads the identifier once, embeds each batch of photos it is given."""

    def __init__(self, model: str, kind: EmbeddingKind, batch_size: int, cpus: float) -> None:
        from .identifier import Identifier  # noqa: PLC0415 - in the actor's process

        self.threads = _use_threads(cpus)
        self.identifier = Identifier.from_pretrained(model)
        self.kind = kind
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from .errors import InvalidImageError  # noqa: PLC0415

        ok = [i for i, e in enumerate(batch["error"]) if not e]
        errors = [str(e) for e in batch["error"]]
        vectors: list[list[float]] = [[] for _ in errors]
        data = [bytes(batch["data"][i]) for i in ok]
        try:
            emb = self.identifier.embed(
                data, batch_size=self.batch_size, kind=self.kind, num_workers=self.threads,
            )  # fmt: skip
            for row, i in enumerate(ok):
                vectors[i] = emb[row].tolist()
        except InvalidImageError:
            for i in ok:  # find which photo: one at a time
                try:
                    one = self.identifier.embed([bytes(batch["data"][i])], kind=self.kind)
                    vectors[i] = one[0].tolist()
                except InvalidImageError as exc:
                    errors[i] = exc.reason
        return {"index": list(batch["index"]), "vector": vectors, "error": errors}


def embed_on_ray(
    images: Sequence[str | os.PathLike[str]],
    model: str = "embedded",
    *,
    kind: EmbeddingKind = "embedding",
    batch_size: int = 32,
    num_actors: int = 1,
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Embed photos on the current Ray cluster (an actor pool holding the identifier).

    For :meth:`~ecomarine.pipeline.Pipeline.enroll`'s ``embed`` (``gallery build --ray``).

    Returns:
        ``(N, D)`` unit-norm vectors, in input order.

    Raises:
        InvalidImageError: Naming the first photo that cannot be read (nothing is added).
    """
    import numpy as np  # noqa: PLC0415

    from .errors import InvalidImageError  # noqa: PLC0415

    rt = _ray()
    ray_init()
    paths = [str(p) for p in images]
    if not paths:
        return np.zeros((0, 0), np.float32)
    ds = rt.data.from_items([{"index": i, "path": p} for i, p in enumerate(paths)])
    cpus = _actor_cpus(rt.cluster_resources(), num_actors)

    def read(batch: dict[str, Any]) -> dict[str, Any]:
        return {"index": list(batch["index"]), **_read(batch)}

    rows = (
        ds.map_batches(read, batch_size=batch_size, num_cpus=_READ_CPUS)
        .map_batches(
            _Embedder,
            fn_constructor_args=(model, kind, batch_size, cpus),
            batch_size=batch_size,
            concurrency=num_actors,
            num_cpus=cpus,
        )
        .take_all()
    )
    rows.sort(key=lambda r: int(r["index"]))
    bad = next((r for r in rows if r["error"]), None)
    if bad is not None:
        raise InvalidImageError(paths[int(bad["index"])], str(bad["error"]))
    return np.asarray([r["vector"] for r in rows], dtype=np.float32)
