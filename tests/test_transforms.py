"""Inference preprocessing: PyTorch resize against Pillow, decode bounds, batches, threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ecomarine.config import PreprocessConfig
from ecomarine.io import load_image
from ecomarine.transforms import (
    REDUCING_GAP,
    load_batch,
    load_pixels,
    normalize_batch,
    preprocess,
    resize,
    resize_pixels,
)


def _photos(gate_dir: Path) -> list[Path]:
    # Real photos of different shapes: 1024-wide whales, 640-wide sharks, 150x150 scenes.
    return [
        sorted((gate_dir / "positives" / "happywhale").glob("*.jpg"))[0],
        sorted((gate_dir / "negatives" / "sharks").glob("*.jpg"))[0],
        sorted((gate_dir / "negatives" / "scenes").glob("*.jpg"))[0],
    ]


def _pillow_exact(img: Image.Image, pp: PreprocessConfig) -> Image.Image:
    """Pillow without its box-filter shortcut (``reducing_gap``): the filter we match."""
    filt = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
    scale = min(pp.width / img.width, pp.height / img.height)
    inner = (
        (pp.width, pp.height)
        if pp.resize == "squash"
        else (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    )
    canvas = Image.new("RGB", (pp.width, pp.height), tuple(round(c * 255) for c in pp.mean))
    canvas.paste(
        img.resize(inner, filt[pp.interpolation]),
        ((pp.width - inner[0]) // 2, (pp.height - inner[1]) // 2),
    )
    return canvas


def test_pillow_resize_with_its_shortcut_is_close(gate_dir: Path) -> None:
    """Training caches use Pillow with reducing_gap: a few grey levels from inference."""
    pp = PreprocessConfig(input_size=(320, 112))
    for path in _photos(gate_dir):
        img = load_image(path)
        diff = np.abs(
            resize_pixels(np.array(img), pp).numpy().astype(int)
            - np.asarray(resize(img, pp)).astype(int)
        )
        assert diff.max() <= 8
        assert diff.mean() < 0.5


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("mode", ["squash", "letterbox"])
@pytest.mark.parametrize("size", [(224, 224), (320, 112), (40, 72)])
def test_resize_pixels_matches_pillow(
    gate_dir: Path, interpolation: str, mode: str, size: tuple[int, int]
) -> None:
    """Down- and upscaling agree with Pillow's exact filters to within two grey levels."""
    pp = PreprocessConfig(input_size=size, interpolation=interpolation, resize=mode)
    for path in _photos(gate_dir):
        img = load_image(path)
        ours = resize_pixels(np.array(img), pp).numpy().astype(int)
        ref = np.asarray(_pillow_exact(img, pp)).astype(int)
        assert ours.shape == ref.shape == (size[0], size[1], 3)
        diff = np.abs(ours - ref)
        assert diff.max() <= 2, (path.name, diff.max())
        assert diff.mean() < 0.05


def test_resize_pixels_nearest_and_identity(gate_dir: Path) -> None:
    img = load_image(_photos(gate_dir)[2])  # 150 x 150
    up = PreprocessConfig(input_size=(300, 300), interpolation="nearest")
    assert np.array_equal(resize_pixels(np.array(img), up).numpy(), np.asarray(resize(img, up)))
    same = PreprocessConfig(input_size=(img.height, img.width))
    assert np.array_equal(resize_pixels(np.array(img), same).numpy(), np.asarray(img))


def test_resize_pixels_rejects_wrong_arrays() -> None:
    pp = PreprocessConfig()
    with pytest.raises(ValueError, match="uint8"):
        resize_pixels(np.zeros((10, 10, 3), np.float32), pp)
    with pytest.raises(ValueError, match="uint8"):
        resize_pixels(np.zeros((10, 10), np.uint8), pp)


def test_normalize_batch_formula_and_layout(gate_dir: Path) -> None:
    pp = PreprocessConfig(input_size=(64, 48), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    resized = [resize_pixels(np.array(load_image(p)), pp) for p in _photos(gate_dir)]
    x = normalize_batch(resized, pp)
    assert x.shape == (3, 3, 64, 48)
    assert x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    naive = np.stack([r.numpy() for r in resized]).astype(np.float64) / 255.0
    naive = ((naive - np.array(pp.mean)) / np.array(pp.std)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(x.numpy(), naive, atol=1e-5)
    with pytest.raises(ValueError, match="photos"):
        normalize_batch([torch.zeros(4, 4, dtype=torch.uint8)], pp)


def test_preprocess_and_load_batch_agree(gate_dir: Path) -> None:
    """The single-image helper, the threaded batch loader and the pipeline share one path."""
    pp = PreprocessConfig(input_size=(96, 64))
    photos = _photos(gate_dir)
    batch = load_batch(photos, pp, workers=2)
    singles = np.stack([preprocess(load_image(p, target_size=(64, 96)), pp) for p in photos])
    np.testing.assert_allclose(batch.numpy(), singles, atol=1e-6)


def test_load_pixels_bounds_decoded_size(tmp_path: Path, gate_dir: Path) -> None:
    """A huge PNG (no DCT scaling) is box-reduced while it stays >= REDUCING_GAP x target."""
    big = load_image(_photos(gate_dir)[0]).resize((4096, 2732))
    path = tmp_path / "big.png"
    big.save(path)
    px = load_pixels(path, (224, 224))
    assert px.dtype == np.uint8
    assert px.ndim == 3
    h, w = px.shape[:2]
    assert w < 4096
    assert h < 2732
    assert w >= REDUCING_GAP * 224
    assert h >= REDUCING_GAP * 224
    assert abs(w / h - 4096 / 2732) < 0.01
    small = load_pixels(path, (2000, 2000))  # already close to the target: untouched
    assert small.shape == (2732, 4096, 3)
    jpeg = load_pixels(_photos(gate_dir)[0], (128, 128))  # JPEG draft: a DCT scale
    with Image.open(_photos(gate_dir)[0]) as im:
        assert jpeg.shape[1] < im.width


def test_decode_threads_run_torch_single_threaded(gate_dir: Path) -> None:
    """Worker threads get one OpenMP thread; the caller's setting is untouched."""
    from ecomarine._threads import _omp_set_num_threads, single_threaded_torch

    before = torch.get_num_threads()
    seen: list[int] = []

    def work() -> None:
        single_threaded_torch()
        seen.append(torch.get_num_threads())

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert torch.get_num_threads() == before
    if _omp_set_num_threads() is not None:
        assert seen == [1]
