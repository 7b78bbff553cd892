"""Reliability, second pass: each defect of the independent attack, reproduced.

Bounded memory and time for every input (thin images, special files, huge files),
untrusted model and gallery folders, non-finite numbers, killed writes, spreadsheet
formulas and EXIF text, CLI tracebacks, and folder containment. The heavier hypothesis
variants are marked ``slow``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ecomarine import (
    ConfigError,
    DataError,
    Gallery,
    GalleryError,
    Identifier,
    InvalidImageError,
    Pipeline,
    load_image,
)
from ecomarine.cli import main
from ecomarine.io import MAX_ASPECT_RATIO

RELEASE = Path(__file__).resolve().parent / "data" / "release-0.1.0.dev0"
TINY_MODEL = RELEASE / "pipeline" / "identifier"


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: "), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def _in_time(fn: Callable[[], Any], seconds: float = 20.0) -> Any:
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it does not return."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (a hang)"
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture(scope="module")
def real_photo(examples_dir: Path) -> Path:
    return next((examples_dir / "belugas" / "queries").glob("*.jpg"))


@pytest.fixture(scope="module")
def thin_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1 x 10,000,000 PNG: 10 MP (under the pixel cap), ~20 KB on disk."""
    path = tmp_path_factory.mktemp("thin") / "thin.png"
    path.write_bytes(_png(Image.new("L", (1, 10_000_000), 128)))
    return path


# --- 1. thin images -----------------------------------------------------------------------


def test_thin_image_is_refused_and_the_run_goes_on(
    embedded_pipeline: Pipeline, thin_png: Path, real_photo: Path
) -> None:
    assert thin_png.stat().st_size < 100_000
    preds = list(embedded_pipeline.predict_many([real_photo, thin_png, real_photo]))
    assert [p.rejection_reason for p in preds] == [None, "unreadable_image", None]
    assert "aspect ratio" in (preds[1].error or "")


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 20_000), st.integers(1, 200))
def test_aspect_ratios_are_bounded(long: int, short: int) -> None:
    arr = np.zeros((short, long), np.uint8)
    if max(long, short) > MAX_ASPECT_RATIO * min(long, short):
        with pytest.raises(InvalidImageError, match="aspect ratio"):
            load_image(arr)
    else:
        assert load_image(arr).size == (long, short)


# --- 2. special files and huge files --------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_without_blocking(tmp_path: Path, embedded_pipeline: Pipeline) -> None:
    fifo = tmp_path / "f.jpg"
    os.mkfifo(fifo)
    with pytest.raises(InvalidImageError, match="FIFO"):
        _in_time(lambda: load_image(fifo))
    pred = _in_time(lambda: embedded_pipeline.predict(fifo))
    assert pred.rejection_reason == "unreadable_image"
    assert "FIFO" in (pred.error or "")


def test_device_behind_a_symlink_is_refused(tmp_path: Path, embedded_pipeline: Pipeline) -> None:
    link = tmp_path / "z.jpg"
    link.symlink_to("/dev/zero")
    with pytest.raises(InvalidImageError, match="device"):
        _in_time(lambda: load_image(link))
    assert _in_time(lambda: embedded_pipeline.predict(link)).rejection_reason == "unreadable_image"


def test_huge_sparse_file_is_refused_before_reading(
    tmp_path: Path, embedded_pipeline: Pipeline
) -> None:
    big = tmp_path / "big.jpg"
    with big.open("wb") as fh:
        fh.truncate(4 * 1024**3)  # 4 GB, sparse: costs no disk
    pred = _in_time(lambda: embedded_pipeline.predict(big))
    assert pred.rejection_reason == "unreadable_image"
    assert "limit" in (pred.error or "")
    with pytest.raises(InvalidImageError, match="limit"):
        load_image(big)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_gallery_with_a_fifo_for_a_file_is_refused(tmp_path: Path) -> None:
    folder = _small_gallery(tmp_path)
    manifest = json.loads((folder / "gallery.json").read_text())
    records = folder / manifest["files"]["records"]["name"]
    records.unlink()
    os.mkfifo(records)
    with pytest.raises(GalleryError, match="FIFO"):
        _in_time(lambda: Gallery.load(folder))


def test_cli_identify_on_special_files_does_not_hang(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tmp_path / "z.jpg"
    link.symlink_to("/dev/zero")
    assert _in_time(lambda: main(["identify", str(link)])) == 0
    assert "rejected: unreadable_image" in capsys.readouterr().out


# --- 3. untrusted config.json ----------------------------------------------------------------


def _model_with(tmp_path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(TINY_MODEL, folder)
    data = json.loads((folder / "config.json").read_text())
    edit(data)
    (folder / "config.json").write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(embedding_size=4_000_000), "embedding_size must be in"),
        (lambda d: d["head"].update(k=10**6), "k must be in"),
        (lambda d: d["preprocess"].update(input_size=[20000, 20000]), "input_size"),
        (lambda d: d.update(backbone="hf-hub:acme/evil"), "plain timm model name"),
        (lambda d: d.update(backbone="local-dir:/etc"), "plain timm model name"),
        (lambda d: d.update(backbone="../../../etc/passwd"), "plain timm model name"),
        (lambda d: d.update(backbone="no_such_net_v9"), "unknown timm backbone"),
        (lambda d: d.update(embedding_size=1024), "shape mismatches"),  # sizes the file lacks
        (lambda d: d.update(members=64), "missing tensors"),
        (lambda d: d["preprocess"].update(mean=[float("nan"), 0.5, 0.5]), "finite"),
        (lambda d: d["preprocess"].update(std=[0, 1, 1]), "std must be positive"),
        (lambda d: d["head"].update(s=float("inf")), "finite"),
        (lambda d: d.update(new_individual_threshold=float("nan")), "cosine"),
    ],
)
def test_hostile_config_is_refused_before_allocating(
    tmp_path: Path, edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    folder = _model_with(tmp_path, edit)
    with pytest.raises(ConfigError, match=message):
        _in_time(lambda: Identifier.from_pretrained(folder, device="cpu"))


def test_deeply_nested_config_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(TINY_MODEL, folder)
    (folder / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        Identifier.from_pretrained(folder)


def test_non_finite_weights_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "model"
    shutil.copytree(TINY_MODEL, folder)
    state = load_file(folder / "model.safetensors")
    state["neck.0.weight"][0, 0] = float("nan")
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ConfigError, match=r"NaN or infinite.*neck\.0\.weight"):
        Identifier.from_pretrained(folder)


_JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
_CONFIG_KEYS = st.sampled_from(
    ["backbone", "pooling", "neck", "embedding_size", "head", "preprocess", "members",
     "backbone_num_classes", "new_individual_thresholds", "name", "format_version", "extra"]
)  # fmt: skip


def _json_mutations(
    make: Callable[[Path], Path],
    json_name: str,
    keys: st.SearchStrategy[str],
    load: Callable[[Path], Any],
    refusal: type[Exception],
    max_examples: int,
) -> Callable[..., Any]:
    """A property test: any value at any key of a JSON file loads or is refused cleanly.

    ``make(tmp_path)`` writes a fresh fixture folder and returns it; ``json_name`` is the
    file mutated there; ``load`` must return or raise ``refusal``, nothing else.
    """

    @settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(key=keys, value=_JSONISH)
    def check(tmp_path: Path, key: str, value: Any) -> None:
        folder = make(tmp_path)
        data = json.loads((folder / json_name).read_text())
        data[key] = value
        (folder / json_name).write_text(json.dumps(data))
        with contextlib.suppress(refusal):
            load(folder)

    return check


def _fresh_model(tmp_path: Path) -> Path:
    folder = tmp_path / "m"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(TINY_MODEL, folder)
    return folder


def _config_mutations(max_examples: int) -> Callable[..., Any]:
    def load(folder: Path) -> Any:
        return Identifier.from_pretrained(folder, device="cpu")

    return _json_mutations(
        _fresh_model, "config.json", _CONFIG_KEYS, load, ConfigError, max_examples
    )


test_hostile_config_values = _config_mutations(25)
test_hostile_config_values_heavy = pytest.mark.slow(_config_mutations(400))


# --- 4. non-finite numbers -----------------------------------------------------------------


def test_nan_query_is_refused() -> None:
    g = Gallery()
    g.add(np.eye(3, dtype=np.float32), ["a", "b", "c"])
    with pytest.raises(GalleryError, match="NaN"):
        g.identify(np.array([[np.nan, 0, 0]], np.float32))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_cli_refuses_non_finite_thresholds(
    value: str, examples_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b = examples_dir / "belugas"
    args = ["evaluate", "--gallery-csv", str(b / "gallery.csv"), "--query-csv"]
    args += [str(b / "queries.csv"), "--images", str(b), "--threshold", value]
    assert main(args) == 2
    err = _one_line_error(capsys)
    assert "finite" in err or "range" in err


def test_training_stops_on_a_non_finite_loss(tmp_path: Path, examples_dir: Path) -> None:
    """Resuming from a checkpoint whose weights went NaN stops at once with a clear error."""
    import torch

    from ecomarine.training import TrainConfig, train

    b = examples_dir / "belugas"
    cfg: dict[str, Any] = {
        "csv": str(b / "gallery.csv"),
        "images": str(b),
        "out": str(tmp_path / "m"),
        "backbone": "test_efficientnet",
        "pretrained": False,
        "input_size": (32, 32),
        "embedding_size": 16,
        "epochs": 1,
        "batch_size": 12,
        "device": "cpu",
        "command": "pytest",
    }
    train(TrainConfig(**cfg))  # type: ignore[arg-type]
    ckpt = tmp_path / "m" / "checkpoints" / "last.pt"
    state = torch.load(ckpt, weights_only=True)
    state["model"]["neck.0.weight"].fill_(float("nan"))
    torch.save(state, ckpt)
    (tmp_path / "m" / "model.safetensors").unlink()
    cfg.update(epochs=2, resume=str(ckpt))
    with pytest.raises(DataError, match="training loss became nan"):
        train(TrainConfig(**cfg))  # type: ignore[arg-type]
    assert not (tmp_path / "m" / "model.safetensors").exists()


_NUMERIC_OPTIONS = [
    ["train", "--csv", "{csv}", "--images", "{images}", "--out", "{out}", "--print-config", "--lr"],
    ["train", "--csv", "{csv}", "--images", "{images}", "--out", "{out}", "--print-config", "--zoom"],
    ["train", "--csv", "{csv}", "--images", "{images}", "--out", "{out}", "--print-config", "--calibration-new-fraction"],
    ["evaluate", "--gallery-csv", "{csv}", "--query-csv", "{csv}", "--images", "{images}", "--threshold"],
    ["calibrate", "{images}", "--csv", "{csv}", "--calibration-csv", "{csv}", "--images", "{images}", "--new-fraction"],
    ["gate", "calibrate", "--manifest", "{csv}", "--min-tpr"],
]  # fmt: skip


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    command=st.sampled_from(_NUMERIC_OPTIONS),
    value=st.sampled_from(["nan", "NaN", "inf", "-inf", "1e999", "-1e999", "+inf"]),
)
def test_no_numeric_option_takes_a_non_finite_value(
    examples_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    value: str,
) -> None:
    b = examples_dir / "belugas"
    fill = {"csv": str(b / "gallery.csv"), "images": str(b), "out": str(tmp_path / "o")}
    args = [a.format(**fill) for a in command] + [value]
    assert main(args) == 2
    err = _one_line_error(capsys)
    assert "finite" in err or "range" in err, err


# --- 6. malformed galleries ------------------------------------------------------------------


def _small_gallery(tmp_path: Path) -> Path:
    g = Gallery(fingerprint="f00d")
    g.add(np.eye(4, dtype=np.float32), ["a", "b", "c", "d"], metadata=[{"n": i} for i in range(4)])
    return g.save(tmp_path / "g")


def _rewrite_records(folder: Path, text: bytes) -> None:
    manifest = json.loads((folder / "gallery.json").read_text())
    entry = manifest["files"]["records"]
    (folder / entry["name"]).write_bytes(text)
    entry["sha256"] = hashlib.sha256(text).hexdigest()
    (folder / "gallery.json").write_text(json.dumps(manifest))


def _edit_manifest(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    manifest = json.loads((folder / "gallery.json").read_text())
    edit(manifest)
    (folder / "gallery.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: _rewrite_records(f, b'{"image_id": "x", "individual_id": "a", "metadata": "ab"}\n' * 4), "metadata"),
        (lambda f: _rewrite_records(f, b"\xff\xfe\xfa\n" * 4), "not UTF-8"),
        (lambda f: _rewrite_records(f, b'{"image_id": 5, "individual_id": "a"}\n' * 4), "image_id"),
        (lambda f: _edit_manifest(f, lambda m: m.update(new_individual_threshold="abc")), "number or null"),
        (lambda f: _edit_manifest(f, lambda m: m.update(count="4")), "'count' must be int"),
        (lambda f: _edit_manifest(f, lambda m: m.update(fingerprint=None)), "no model fingerprint"),
        (lambda f: _edit_manifest(f, lambda m: m.update(aggregation="median")), "aggregation"),
        (lambda f: _edit_manifest(f, lambda m: m.update(dim=7)), "dim 7"),
        (lambda f: (f / "gallery.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000), "nested too deeply"),
        (lambda f: (f / "gallery.json").write_text('{"format_version": 2, "count": ' + "9" * 5000 + "}"), "unreadable manifest"),
    ],
)  # fmt: skip
def test_malformed_gallery_is_refused(
    tmp_path: Path, change: Callable[[Path], None], message: str
) -> None:
    folder = _small_gallery(tmp_path)
    change(folder)
    with pytest.raises(GalleryError, match=message):
        Gallery.load(folder, expected_fingerprint="f00d")


def test_gallery_info_on_a_malformed_gallery_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _small_gallery(tmp_path)
    _edit_manifest(folder, lambda m: m.update(new_individual_threshold="abc"))
    assert main(["gallery", "info", str(folder)]) == 2
    assert "new_individual_threshold" in _one_line_error(capsys)


def _fresh_gallery(tmp_path: Path) -> Path:
    shutil.rmtree(tmp_path / "g", ignore_errors=True)
    return _small_gallery(tmp_path)


def _manifest_mutations(max_examples: int) -> Callable[..., Any]:
    keys = st.sampled_from(
        ["count", "dim", "fingerprint", "embedding_kind", "model_name", "files",
         "new_individual_threshold", "aggregation", "index_kind", "format_version"]
    )  # fmt: skip
    return _json_mutations(
        _fresh_gallery, "gallery.json", keys, Gallery.load, GalleryError, max_examples
    )


test_hostile_manifests = _manifest_mutations(25)
test_hostile_manifests_heavy = pytest.mark.slow(_manifest_mutations(400))


# --- 7. killed writes leave no temporary files -----------------------------------------------


def _kill_while(script: str, delays: list[float]) -> None:
    for delay in delays:
        proc = subprocess.Popen([sys.executable, "-c", script])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_killed_gallery_saves_leave_nothing_behind(tmp_path: Path) -> None:
    folder = tmp_path / "g"
    # Few records, large vectors: the saves spend their time writing files.
    script = textwrap.dedent(
        f"""
        import numpy as np
        from ecomarine import Gallery
        g = Gallery(fingerprint="f00d")
        g.add(np.random.default_rng(0).standard_normal((60_000, 512)).astype(np.float32),
              [f"w{{i % 50}}" for i in range(60_000)])
        while True:
            g.save({str(folder)!r})
        """
    )

    def leftovers() -> list[str]:
        found = folder.iterdir() if folder.is_dir() else iter(())
        return sorted(p.name for p in found if p.name.endswith(".tmp"))

    delays = [1.6 + 0.23 * i for i in range(24)]  # a busy machine starts saving later
    while not leftovers() and delays:
        _kill_while(script, [delays.pop(0)])
    assert leftovers(), "no kill landed mid-write"
    while not (folder / "gallery.json").is_file():  # a complete save to load, if none yet
        _kill_while(script, [4.0])
    Gallery.load(folder).save(folder)  # the next save cleans up
    assert leftovers() == []


def test_killed_atomic_writes_are_cleaned_on_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "archive.zip"
    script = textwrap.dedent(
        f"""
        import os
        from ecomarine._atomic import atomic_write
        while True:
            with atomic_write({str(target)!r}) as fh:
                for _ in range(400):
                    fh.write(os.urandom(1 << 20))
        """
    )
    _kill_while(script, [1.2, 1.6])
    assert [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")], "no leftover made"
    from ecomarine._atomic import atomic_write_bytes

    atomic_write_bytes(target, b"fresh")
    assert [p.name for p in tmp_path.iterdir()] == ["archive.zip"]
    assert target.read_bytes() == b"fresh"


# --- 8. formulas and EXIF text ---------------------------------------------------------------


def test_formulas_are_neutralised_in_csv_and_darwin_core(tmp_path: Path) -> None:
    from ecomarine import Match, Prediction
    from ecomarine.darwin_core import DatasetMetadata, write_dwca
    from ecomarine.results import ResultsWriter, read_results

    evil = "=cmd|' /C calc'!A0"
    pred = Prediction(
        source=str(tmp_path / "+photo.jpg"),
        is_cetacean=True,
        gate_score=0.9,
        species="@beluga",
        individual_id=evil,
        candidates=(Match(evil, 0.8),),
        candidate_source="gallery",
    )
    with ResultsWriter(tmp_path / "r.csv") as writer:
        writer.write(pred)
    assert read_results(tmp_path / "r.csv") == [pred]  # the quote is undone on reading
    text = (tmp_path / "r.csv").read_text()
    assert "'=cmd" in text
    assert "'@beluga" in text
    assert ",=" not in text
    assert ",@" not in text
    import zipfile

    write_dwca(tmp_path / "d.zip", [pred], DatasetMetadata(license="CC0-1.0"))
    with zipfile.ZipFile(tmp_path / "d.zip") as zf:
        occurrences = zf.read("occurrence.txt").decode()
    assert "\t'=cmd" in occurrences
    assert "\t=cmd" not in occurrences
    from ecomarine._text import spreadsheet_safe

    assert spreadsheet_safe("-150.25") == "-150.25"  # numbers stay numbers
    assert spreadsheet_safe(-3.0) == -3.0


def test_exif_text_is_validated(tmp_path: Path, real_photo: Path) -> None:
    from ecomarine.exif import read_exif_event

    img = Image.open(real_photo)
    exif = Image.Exif()
    exif.get_ifd(0x8769).update({0x9003: "2020:01:01 10:00:00", 0x9011: "=1+1\t\n"})
    exif.get_ifd(0x8825).update(
        {1: "N", 2: (60.0, 30.0, 0.0), 3: "W", 4: (150.0, 0.0, 0.0), 18: '=HYPERLINK("x")'}
    )
    path = tmp_path / "exif.jpg"
    img.save(path, exif=exif.tobytes())
    event = read_exif_event(path)
    assert event["eventDate"] == "2020-01-01T10:00:00"
    assert event["decimalLatitude"] == "60.500000"
    assert "geodeticDatum" not in event


# --- 9. CLI tracebacks -----------------------------------------------------------------------


@pytest.mark.parametrize("device", ["bogus", "cuda:99", "tpu"])
def test_train_with_a_bad_device_is_one_line(
    device: str, tmp_path: Path, examples_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b = examples_dir / "belugas"
    args = ["train", "--csv", str(b / "gallery.csv"), "--images", str(b)]
    args += ["--out", str(tmp_path / "m"), "--device", device, "--backbone", "test_efficientnet"]
    assert main([*args, "--no-pretrained"]) == 2
    assert "device" in _one_line_error(capsys)


def test_export_dwc_survives_odd_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ecomarine import Prediction

    long_name = str(tmp_path / ("x" * 300 + ".jpg"))
    good = Prediction(source=long_name, is_cetacean=True, gate_score=0.9).to_dict()
    results = tmp_path / "r.jsonl"
    results.write_text(json.dumps(good) + "\n")
    license_ = ["--license", "CC-BY-4.0"]
    assert main(["export-dwc", str(results), "--out", str(tmp_path / "a.zip"), *license_]) == 0
    assert (tmp_path / "a.zip").is_file()
    capsys.readouterr()
    huge = dict(good, gate_score=int("9" * 400))
    results.write_text(json.dumps(huge) + "\n")
    assert main(["export-dwc", str(results), "--out", str(tmp_path / "b.zip"), *license_]) == 2
    assert "r.jsonl:1" in _one_line_error(capsys)


def test_clip_gate_offline_is_one_line(tmp_path: Path) -> None:
    """In a real process: open_clip's own log line must not come before ours."""
    pytest.importorskip("open_clip")
    manifest = tmp_path / "m.csv"
    manifest.write_text("relpath,label,group,source,license\n")
    args = ["gate", "evaluate", "--manifest", str(manifest), "--backend", "clip"]
    result = subprocess.run(
        [sys.executable, "-m", "ecomarine", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


# --- 10. folder containment ------------------------------------------------------------------


def test_symlinked_gallery_files_are_refused(tmp_path: Path) -> None:
    folder = _small_gallery(tmp_path)
    manifest = json.loads((folder / "gallery.json").read_text())
    name = manifest["files"]["records"]["name"]
    outside = tmp_path / "outside.jsonl"
    (folder / name).rename(outside)
    (folder / name).symlink_to(outside)
    with pytest.raises(GalleryError, match="symbolic link"):
        Gallery.load(folder)


# --- memory: bounded for any single input ----------------------------------------------------

#: The bound SECURITY.md states: peak resident memory that any one input may add to
#: ``predict_many`` above the loaded pipeline.
MAX_EXTRA_BYTES = 768 * 1024**2


def test_peak_memory_for_the_worst_inputs_is_bounded(tmp_path: Path, thin_png: Path) -> None:
    from .test_reliability import _png_bomb

    big = tmp_path / "big.jpg"
    with big.open("wb") as fh:
        fh.truncate(4 * 1024**3)
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    (tmp_path / "bomb.png").write_bytes(_png_bomb(200_000, 200_000))
    huge = tmp_path / "huge.jpg"
    Image.new("RGB", (8000, 6000), (90, 120, 140)).save(huge, quality=90)
    # The largest images accepted: a 49-megapixel PNG (no reduced-scale decoding, unlike
    # JPEG) and a 59-megapixel strip at the largest aspect ratio allowed.
    Image.new("RGB", (7000, 7000), (90, 120, 140)).save(tmp_path / "square.png")
    Image.new("RGB", (77_000, 770), (90, 120, 140)).save(tmp_path / "strip.png")
    worst = [thin_png, big, tmp_path / "zero.jpg", tmp_path / "bomb.png", huge]
    worst += [tmp_path / "square.png", tmp_path / "strip.png"]
    script = textwrap.dedent(
        f"""
        import json, sys
        from ecomarine import Pipeline
        def hwm():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        pipe = Pipeline.from_pretrained("embedded", device="cpu")
        list(pipe.predict_many([{str(RELEASE.parent.parent.parent / "examples" / "belugas" / "queries" / "train0053.jpg")!r}]))
        base = hwm()
        out = {{}}
        for path in {[str(p) for p in worst]!r}:
            pred = next(pipe.predict_many([path]))
            out[path] = [pred.rejection_reason, hwm() - base]
        print(json.dumps(out))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    # The figures SECURITY.md quotes (shown with `pytest -s -k peak_memory`).
    for path, (reason, extra) in measured.items():
        print(f"peak memory: {Path(path).name}: +{extra / 2**20:.1f} MiB ({reason})")
    for path, (reason, extra) in measured.items():
        assert extra < MAX_EXTRA_BYTES, f"{path}: {extra / 2**20:.0f} MiB over the loaded pipeline"
        if not path.endswith(("huge.jpg", "square.png", "strip.png")):
            assert reason is not None, path
