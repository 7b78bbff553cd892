"""Hostile input, crash safety, concurrency and resource limits."""

from __future__ import annotations

import io
import itertools
import os
import struct
import subprocess
import sys
import textwrap
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ecomarine import EcomarineError, Gallery, InvalidImageError, Pipeline, Prediction, load_image
from ecomarine._atomic import atomic_write_bytes
from ecomarine.cli import main


def _enc(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _small_real(examples_dir: Path) -> Image.Image:
    img = Image.open(next((examples_dir / "belugas" / "queries").glob("*.jpg"))).convert("RGB")
    img.thumbnail((48, 48))
    return img


def _png_bomb(width: int, height: int) -> bytes:
    data = _enc(Image.new("L", (1, 1)), "PNG")
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return data[:8] + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + data[33:]


def hostile_corpus(root: Path, examples_dir: Path) -> list[Path]:
    """Write a corpus of nasty files (each a case the pipeline must survive)."""
    real = _small_real(examples_dir)
    root.mkdir(parents=True, exist_ok=True)
    cases: dict[str, bytes] = {
        "empty.jpg": b"",
        "random.jpg": os.urandom(2048),
        "text.png": b"not an image at all\n" * 20,
        "bomb.png": _png_bomb(200_000, 200_000),
        "bomb_60mp.png": _png_bomb(9000, 9000),
        "zero.gif": b"GIF89a\x00\x00\x00\x00\x00\x00\x00;",
        "one_pixel.png": _enc(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"),
        "sixteen_bit.png": _enc(
            Image.fromarray((np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)), "PNG"
        ),
        "cmyk.jpg": _enc(real.convert("CMYK"), "JPEG"),
        "palette.png": _enc(real.convert("P"), "PNG", transparency=0),
        "png_named.jpg": _enc(real, "PNG"),
        "jpeg_named.webp": _enc(real, "JPEG"),
        "truncated.jpg": _enc(real, "JPEG")[:300],
    }
    frames = [real, real.rotate(90), real.rotate(180)]
    cases["animated.gif"] = _enc(frames[0], "GIF", save_all=True, append_images=frames[1:])
    cases["animated.webp"] = _enc(frames[0], "WEBP", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 1234  # broken orientation
    cases["bad_orientation.jpg"] = _enc(real, "JPEG", exif=exif.tobytes())
    paths = []
    for name, data in cases.items():
        (root / name).write_bytes(data)
        paths.append(root / name)
    (root / "a_directory.jpg").mkdir(exist_ok=True)
    paths += [root / "a_directory.jpg", root / "does_not_exist.jpg"]
    return paths


def test_hostile_corpus_through_the_pipeline(
    tmp_path: Path, examples_dir: Path, embedded_pipeline: Pipeline
) -> None:
    paths = hostile_corpus(tmp_path / "corpus", examples_dir)
    preds = list(embedded_pipeline.predict_many(paths, batch_size=4, num_workers=2))
    assert len(preds) == len(paths)  # 19 cases
    by_name = {Path(p.source or "").name: p for p in preds}
    for p in preds:
        assert isinstance(p, Prediction)
        assert Prediction.from_dict(p.to_dict()) == p
    for name in (
        "empty.jpg",
        "random.jpg",
        "text.png",
        "zero.gif",
        "truncated.jpg",
        "a_directory.jpg",
        "does_not_exist.jpg",
    ):
        assert by_name[name].rejection_reason == "unreadable_image", name
        assert name in (by_name[name].error or "")
    assert by_name["bomb.png"].rejection_reason == "image_too_large"
    assert by_name["bomb_60mp.png"].rejection_reason == "image_too_large"
    for name in (
        "one_pixel.png",
        "sixteen_bit.png",
        "cmyk.jpg",
        "palette.png",
        "png_named.jpg",
        "jpeg_named.webp",
        "animated.gif",
        "animated.webp",
        "bad_orientation.jpg",
    ):
        assert by_name[name].rejection_reason in (None, "not_cetacean"), name
        assert by_name[name].gate_score is not None


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_unreadable_permissions(tmp_path: Path) -> None:
    path = tmp_path / "locked.png"
    path.write_bytes(_enc(Image.new("RGB", (4, 4)), "PNG"))
    path.chmod(0)
    with pytest.raises(InvalidImageError, match="cannot open"):
        load_image(path)


def test_every_truncation_point(examples_dir: Path) -> None:
    """All prefixes of a real JPEG and PNG: an RGB image or InvalidImageError, nothing else."""
    real = _small_real(examples_dir)
    tried = 0
    for data in (_enc(real, "JPEG", quality=80), _enc(real, "PNG")):
        for cut in range(len(data)):
            try:
                img = load_image(data[:cut])
            except InvalidImageError:
                pass
            else:
                assert img.mode == "RGB"
            tried += 1
    assert tried > 2000


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=512), st.sampled_from([".jpg", ".png", ".gif", ".webp", ".tif", ""]))
def test_random_files_through_pipeline(
    embedded_pipeline: Pipeline, data: bytes, suffix: str
) -> None:
    pred = embedded_pipeline.predict(data)
    assert isinstance(pred, Prediction)
    assert pred.rejection_reason in ("unreadable_image", "not_cetacean", None)


# --- crash safety -----------------------------------------------------------------------


def test_atomic_writes_survive_kills(tmp_path: Path) -> None:
    """Kill a process rewriting a file at random moments: the file is always complete."""
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"A" * 1000)
    script = textwrap.dedent(
        f"""
        from ecomarine._atomic import atomic_write_bytes
        i = 0
        while True:
            i += 1
            atomic_write_bytes({str(target)!r}, bytes([65 + i % 26]) * (1000 + (i % 7) * 1_000_000))
        """
    )
    rng = np.random.default_rng(0)
    trials = 12
    for _ in range(trials):
        proc = subprocess.Popen([sys.executable, "-c", script])
        try:
            proc.wait(timeout=float(rng.uniform(0.3, 1.2)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        data = target.read_bytes()
        assert len(data) % 1_000_000 == 1000
        assert len(set(data)) == 1
    leftovers = [p for p in tmp_path.iterdir() if p.name != "out.bin"]
    assert all(p.name.endswith(".tmp") for p in leftovers)


# --- concurrency ------------------------------------------------------------------------


def test_pipeline_threads_match_sequential(embedded_pipeline: Pipeline, examples_dir: Path) -> None:
    photos = sorted((examples_dir / "belugas" / "queries").glob("*.jpg"))[:6]
    sequential = [embedded_pipeline.predict(p) for p in photos]
    results: dict[int, Prediction] = {}

    def work(i: int) -> None:
        results[i] = embedded_pipeline.predict(photos[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(photos))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, pred in enumerate(sequential):
        assert results[i].gate_score == pytest.approx(pred.gate_score, abs=1e-5)
        assert results[i].individual_id == pred.individual_id


def test_two_processes_adding_to_one_gallery(tmp_path: Path) -> None:
    folder = tmp_path / "g"
    g = Gallery()
    g.add(np.eye(4, dtype=np.float32)[:1], ["seed"])
    g.save(folder)
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from ecomarine import Gallery
        for i in range(8):
            with Gallery.update({str(folder)!r}) as g:
                g.add(np.random.default_rng(i).standard_normal((1, 4)).astype("float32"), [sys.argv[1] + str(i)])
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, name]) for name in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=120) == 0
    final = Gallery.load(folder)
    assert len(final) == 17  # nothing lost: 1 + 2 x 8
    assert {f"a{i}" for i in range(8)} | {f"b{i}" for i in range(8)} | {"seed"} == set(
        final.individuals()
    )


# --- resource limits --------------------------------------------------------------------


def test_predict_many_reads_ahead_a_bounded_amount(
    embedded_pipeline: Pipeline, examples_dir: Path
) -> None:
    photo = next((examples_dir / "belugas" / "queries").glob("*.jpg"))
    consumed = 0

    def endless():  # type: ignore[no-untyped-def]
        nonlocal consumed
        while True:
            consumed += 1
            yield photo

    stream = embedded_pipeline.predict_many(endless(), batch_size=4, num_workers=2)
    got = list(itertools.islice(stream, 10))
    stream.close()
    assert len(got) == 10
    assert consumed <= 10 + 2 * 4 + 4  # the read-ahead window, not the whole stream
    assert not [t for t in threading.enumerate() if t.name.startswith("ecomarine-decode")]


def test_keyboard_interrupt_leaves_no_threads(
    embedded_pipeline: Pipeline, examples_dir: Path
) -> None:
    photo = next((examples_dir / "belugas" / "queries").glob("*.jpg"))

    def interrupted():  # type: ignore[no-untyped-def]
        yield from [photo] * 5
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        for _ in embedded_pipeline.predict_many(interrupted(), batch_size=2, num_workers=2):
            pass
    assert not [t for t in threading.enumerate() if t.name.startswith("ecomarine-decode")]


# --- CLI fuzzing ------------------------------------------------------------------------

_WORDS = [
    "identify",
    "gallery",
    "build",
    "add",
    "info",
    "remove",
    "gate",
    "score",
    "calibrate",
    "evaluate",
    "export-dwc",
    "train",
    "--csv",
    "--out",
    "--model",
    "--gallery",
    "--batch-size",
    "--top-k",
    "--json",
    "--manifest",
    "--images",
    "--epochs",
    "-1",
    "0",
    "abc",
    "/nonexistent",
    "x.jpg",
    "--",
    "-",
    "--help",
    "--version",
    "--min-tpr",
    "2.5",
    "--kind",
    "both",
    "ü",
    "",
]


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(_WORDS), max_size=6))
def test_cli_fuzz_never_tracebacks(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    try:
        code = main(args)
    except EcomarineError as exc:  # pragma: no cover - main must catch these
        pytest.fail(f"uncaught {exc!r}")
    out = capsys.readouterr()
    assert code in (0, 2), (args, out.err)
    assert "Traceback" not in out.err
    if code == 2:
        assert out.err.startswith("error: ")
        assert out.err.count("\n") == 1


# --- heavy variants (python -m pytest -m slow) ------------------------------------------


@pytest.mark.slow
@settings(
    max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=4096))
def test_random_files_through_pipeline_heavy(embedded_pipeline: Pipeline, data: bytes) -> None:
    pred = embedded_pipeline.predict(data)
    assert pred.rejection_reason in ("unreadable_image", "not_cetacean", None)


@pytest.mark.slow
@settings(
    max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(_WORDS), max_size=8))
def test_cli_fuzz_heavy(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code = main(args)
    err = capsys.readouterr().err
    assert code in (0, 2)
    assert "Traceback" not in err


def test_reading_while_another_process_saves(tmp_path: Path) -> None:
    folder = tmp_path / "g"
    g = Gallery()
    g.add(np.eye(8, dtype=np.float32), [f"w{i}" for i in range(8)])
    g.save(folder)
    script = textwrap.dedent(
        f"""
        import numpy as np
        from ecomarine import Gallery
        g = Gallery.load({str(folder)!r})
        for i in range(200):
            g.save({str(folder)!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    loads = 0
    try:
        while proc.poll() is None:
            assert len(Gallery.load(folder)) == 8  # never a missing-file error
            loads += 1
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0
    assert loads > 0
