"""Identification on a real local Ray cluster (no mocks), against ``Pipeline.predict_many``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pads = pytest.importorskip("pyarrow.dataset")

from ecomarine import Pipeline  # noqa: E402
from ecomarine.distributed import done_paths, identify_dataset, ray_init  # noqa: E402
from ecomarine.results import CSV_COLUMNS  # noqa: E402

from .helpers import example_catalogue  # noqa: E402

pytestmark = [
    pytest.mark.enable_socket,
    pytest.mark.allow_hosts(["127.0.0.1"]),
    # Ray's own deprecations (of its own settings), not ours.
    pytest.mark.filterwarnings("ignore::DeprecationWarning:ray"),
    pytest.mark.filterwarnings("ignore::FutureWarning:ray"),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray_init(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def catalogue(examples_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real gallery (the examples' belugas), in a folder the test may write."""
    return example_catalogue(examples_dir, tmp_path_factory.mktemp("ray") / "gallery")


@pytest.fixture
def photos(examples_dir: Path, tmp_path: Path) -> list[Path]:
    """Ten real photos, a corrupt one and a missing one."""
    folder = tmp_path / "photos"
    folder.mkdir()
    real = sorted((examples_dir / "belugas" / "queries").glob("*.jpg"))[:8]
    real += [examples_dir / "not_cetacean" / "shark-adam-rutkowski-unsplash.jpg"]
    out = []
    for p in real:
        shutil.copyfile(p, folder / p.name)
        out.append(folder / p.name)
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    return [*out, folder / "corrupt.jpg", folder / "missing.jpg"]


def rows_of(folder: Path, fmt: str = "parquet") -> list[dict[str, object]]:
    files = sorted(str(p) for p in folder.glob("*.parquet" if fmt == "parquet" else "*.json*"))
    table = pads.dataset(files, format="parquet" if fmt == "parquet" else "json").to_table()
    return table.to_pylist()


def test_ray_rows_equal_predict_many_and_a_rerun_skips_what_is_done(
    cluster: None, catalogue: Path, photos: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    identify_dataset(
        [str(p) for p in photos], "embedded", catalogue, output=out, batch_size=4, num_actors=2
    )
    rows = {r["path"]: r for r in rows_of(out)}
    assert set(rows) == {str(p) for p in photos}
    assert set(next(iter(rows.values()))) == {"path", *CSV_COLUMNS}
    # The same photos in process: the same answers.
    pipe = Pipeline.from_pretrained("embedded", gallery=catalogue, device="cpu")
    readable = photos[:-1]  # the missing file cannot even be given to predict_many
    for path, pred in zip(readable, pipe.predict_many(readable), strict=True):
        row = rows[str(path)]
        assert row["rejection_reason"] == pred.rejection_reason
        assert row["individual_id"] == pred.individual_id
        assert row["is_new_individual"] == pred.is_new_individual
        assert row["sha256"] == pred.sha256
        if pred.gate_score is not None:
            assert row["gate_score"] == pytest.approx(pred.gate_score, abs=1e-4)
        cands = json.loads(str(row["candidates"]))
        assert [c["individual_id"] for c in cands] == [c.individual_id for c in pred.candidates]
        np.testing.assert_allclose(
            [c["score"] for c in cands], [c.score for c in pred.candidates], atol=1e-4
        )
    assert rows[str(photos[-2])]["rejection_reason"] == "unreadable_image"  # corrupt
    missing = rows[str(photos[-1])]
    assert missing["rejection_reason"] == "unreadable_image"
    assert "FileNotFoundError" in str(missing["error"]) or "No such file" in str(missing["error"])
    assert rows[str(photos[-3])]["rejection_reason"] == "not_cetacean"  # the shark
    # A rerun skips everything written; a new photo is the only new row.
    files_before = sorted(out.iterdir())
    identify_dataset([str(p) for p in photos], "embedded", catalogue, output=out, batch_size=4)
    assert sorted(out.iterdir()) == files_before
    extra = tmp_path / "extra.jpg"
    shutil.copyfile(photos[0], extra)
    identify_dataset(
        [str(p) for p in [*photos, extra]], "embedded", catalogue, output=out, batch_size=4
    )
    assert len(rows_of(out)) == len(photos) + 1
    assert str(extra) in done_paths(out)


def test_jsonl_output_and_the_cli(
    cluster: None, catalogue: Path, photos: list[Path], tmp_path: Path
) -> None:
    from ecomarine.cli import main

    out = tmp_path / "rows"
    code = main(
        [
            "identify", *[str(p) for p in photos[:3]], "--gallery", str(catalogue),
            "--ray", "local", "--output", str(out), "--ray-format", "jsonl", "--batch-size", "2",
        ]
    )  # fmt: skip
    assert code == 0
    rows = rows_of(out, "jsonl")
    assert sorted(r["path"] for r in rows) == sorted(str(p.resolve()) for p in photos[:3])
    assert main(["identify", str(photos[0]), "--ray", "local"]) == 2  # no --output folder
    assert (
        main(
            ["identify", str(photos[0]), "--ray", "local", "--output", str(out), "--dwca", "x.zip"]
        )
        == 2
    )


def test_gallery_build_on_ray_equals_the_one_built_here(
    cluster: None, examples_dir: Path, tmp_path: Path
) -> None:
    from ecomarine import Gallery, InvalidImageError
    from ecomarine.cli import main
    from ecomarine.distributed import embed_on_ray

    belugas = examples_dir / "belugas"
    here, there = tmp_path / "here", tmp_path / "there"
    args = ["gallery", "build", "--csv", str(belugas / "gallery.csv"), "--images", str(belugas)]
    assert main([*args, "--out", str(here)]) == 0
    assert (
        main(
            [*args, "--out", str(there), "--ray", "local", "--ray-actors", "2", "--batch-size", "8"]
        )
        == 0
    )
    a, b = Gallery.load(here), Gallery.load(there)
    assert [r["individual_id"] for r in a.records()] == [r["individual_id"] for r in b.records()]
    assert [r["metadata"]["sha256"] for r in a.records()] == [
        r["metadata"]["sha256"] for r in b.records()
    ]
    cos = np.sum(a.embeddings * b.embeddings, axis=1)
    assert cos.min() >= 0.9999
    assert a.fingerprint == b.fingerprint
    # An unreadable photo is named, and nothing is returned.
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a photo")
    with pytest.raises(InvalidImageError, match=r"bad\.jpg"):
        embed_on_ray([str(belugas / "gallery" / "train0003.jpg"), str(bad)], batch_size=2)
