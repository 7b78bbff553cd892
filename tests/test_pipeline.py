from __future__ import annotations

import csv
import io
import platform
import struct
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ecomarine.pipeline as pipeline_module
from ecomarine import Gallery, GalleryError, Identifier, Pipeline, Prediction, _memory


def _bomb_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = buf.getvalue()
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return data[:8] + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_predict_many_folder_with_bad_files(
    tmp_path: Path, examples_dir: Path, embedded_pipeline: Pipeline
) -> None:
    queries = sorted((examples_dir / "belugas" / "queries").glob("*.jpg"))[:3]
    shark = next((examples_dir / "not_cetacean").glob("*.jpg"))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(queries[0].read_bytes()[:500])
    huge = tmp_path / "huge.png"
    huge.write_bytes(_bomb_png())
    missing = tmp_path / "missing.jpg"
    inputs = [queries[0], corrupt, shark, huge, queries[1], missing, queries[2]]
    preds = list(embedded_pipeline.predict_many(inputs, batch_size=2, num_workers=2))
    assert len(preds) == len(inputs)
    assert [p.source for p in preds] == [str(p) for p in inputs]
    reasons = [p.rejection_reason for p in preds]
    assert reasons == [
        None,
        "unreadable_image",
        "not_cetacean",
        "image_too_large",
        None,
        "unreadable_image",
        None,
    ]
    assert "truncated" in (preds[1].error or "")
    assert "corrupt.jpg" in (preds[1].error or "")
    assert "no such file" in (preds[5].error or "")
    assert preds[2].gate_score is not None
    assert preds[2].gate_score < embedded_pipeline.gate.threshold  # type: ignore[union-attr]
    for p in (preds[0], preds[4], preds[6]):
        assert p.is_cetacean
        assert p.sha256 is not None
        assert len(p.sha256) == 64
    assert preds[0].sha256 == __import__("hashlib").sha256(queries[0].read_bytes()).hexdigest()


def test_enroll_identify_save_and_reload(tmp_path: Path, examples_dir: Path) -> None:
    belugas = examples_dir / "belugas"
    gallery_rows = _rows(belugas / "gallery.csv")
    pipe = Pipeline.from_pretrained("embedded", device="cpu")
    ids = pipe.enroll(
        [belugas / r["image"] for r in gallery_rows],
        [r["individual_id"] for r in gallery_rows],
        species="beluga",
        metadata=[{"encounter": r["encounter"]} for r in gallery_rows],
    )
    assert len(ids) == 36
    assert pipe.gallery is not None
    # A gallery photo identifies itself, with the score of an identical image.
    first = pipe.predict(belugas / gallery_rows[0]["image"])
    assert first.individual_id == gallery_rows[0]["individual_id"]
    assert first.candidates[0].score > 0.999
    assert first.species == "beluga"
    assert len(first.candidates) == 5
    # In-memory sources work too.
    same = pipe.predict(Image.open(belugas / gallery_rows[0]["image"]))
    assert same.individual_id == first.individual_id
    folder = pipe.save_pretrained(tmp_path / "pipe")
    again = Pipeline.from_pretrained(folder, device="cpu")
    assert again.gallery is not None
    assert len(again.gallery) == 36
    assert (
        again.predict(belugas / gallery_rows[5]["image"]).individual_id
        == gallery_rows[5]["individual_id"]
    )


def test_gallery_from_another_model_is_refused(tmp_path: Path, embedded_pipeline: Pipeline) -> None:
    g = Gallery(fingerprint="not-this-model")
    g.add(np.ones((1, embedded_pipeline.identifier.embedding_size), np.float32), ["a"])
    with pytest.raises(GalleryError, match="different model"):
        Pipeline(embedded_pipeline.identifier, None, g)
    g.save(tmp_path / "g")
    with pytest.raises(GalleryError, match="different model"):
        Pipeline.from_pretrained("embedded", gallery=tmp_path / "g")


def test_no_gallery_no_head_still_answers(embedded_pipeline: Pipeline, examples_dir: Path) -> None:
    photo = next((examples_dir / "belugas" / "queries").glob("*.jpg"))
    pipe = Pipeline(
        Identifier.from_pretrained("embedded-imagenet"), embedded_pipeline.gate
    )  # no gallery, no head
    pred = pipe.predict(photo)
    assert isinstance(pred, Prediction)
    assert pred.is_cetacean
    assert pred.candidates == ()
    assert Prediction.from_dict(pred.to_dict()) == pred


def test_head_candidates_without_gallery(examples_dir: Path) -> None:
    from .test_identifier import tiny_identifier

    pipe = Pipeline(tiny_identifier(), gate=None, top_k=2)
    pred = pipe.predict(next((examples_dir / "belugas" / "queries").glob("*.jpg")))
    assert [len(pred.candidates)] == [2]
    assert pred.candidates[0].individual_id in ("w1", "w2", "w3")
    # The head ranks the model's own training individuals: hints, not an identification.
    assert pred.candidate_source == "head"
    assert pred.individual_id is None
    assert pred.species is None  # a one-species head says nothing about species


def test_cancelled_iteration_leaves_no_threads(
    embedded_pipeline: Pipeline, examples_dir: Path
) -> None:
    photos = sorted((examples_dir / "belugas" / "gallery").glob("*.jpg")) * 3
    for _ in embedded_pipeline.predict_many(photos, batch_size=4, num_workers=2):
        break
    alive = [t for t in threading.enumerate() if t.name.startswith("ecomarine-decode")]
    assert alive == []


def test_predict_many_trims_the_heap_every_few_hundred_photos(
    embedded_pipeline: Pipeline, examples_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Freed decode buffers go back to the OS every _TRIM_EVERY photos (flat memory)."""
    _memory.release_free_memory()  # works (glibc) or is a no-op, never raises
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert _memory._malloc_trim() is not None
    calls: list[int] = []
    monkeypatch.setattr(pipeline_module, "release_free_memory", lambda: calls.append(1))
    monkeypatch.setattr(pipeline_module, "_TRIM_EVERY", 3)
    photos = sorted((examples_dir / "belugas" / "queries").glob("*.jpg"))[:7]
    preds = list(embedded_pipeline.predict_many(photos, batch_size=2, num_workers=2))
    assert len(preds) == 7
    assert len(calls) == 2  # batches of 2, 2 (trim), 2, 1 (trim)


def test_on_a_cpu_decoding_and_networks_take_turns(
    embedded_pipeline: Pipeline, examples_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No photo is decoded while a network runs (they would fight for the same cores)."""
    spans: dict[str, list[tuple[float, float]]] = {"decode": [], "network": []}
    lock = threading.Lock()
    clock = __import__("time").perf_counter

    def timed(kind: str, fn):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            start = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                with lock:
                    spans[kind].append((start, clock()))

        return wrapper

    pipe = embedded_pipeline
    assert pipe.gate is not None
    monkeypatch.setattr(pipe, "_prepare", timed("decode", pipe._prepare))
    monkeypatch.setattr(pipe.gate, "score_tensor", timed("network", pipe.gate.score_tensor))
    monkeypatch.setattr(
        pipe.identifier, "embed_tensor", timed("network", pipe.identifier.embed_tensor)
    )
    photos = sorted((examples_dir / "belugas" / "queries").glob("*.jpg"))[:9]
    preds = list(pipe.predict_many(photos, batch_size=3, num_workers=2))
    assert [p.source for p in preds] == [str(p) for p in photos]
    assert len(spans["decode"]) == 9
    assert len(spans["network"]) >= 3
    for d0, d1 in spans["decode"]:
        for n0, n1 in spans["network"]:
            assert d1 <= n0 or n1 <= d0, "a photo was decoded while a network ran"
