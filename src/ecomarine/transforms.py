"""Preprocessing that travels with the weights: resize, normalise, batch."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from .config import PreprocessConfig
from .io import ImageSource, load_image

__all__ = ["default_workers", "load_batch", "preprocess", "resize", "thread_map", "to_batch"]

_T = TypeVar("_T")
_R = TypeVar("_R")

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def default_workers() -> int:
    """Decode threads to use by default: the CPU count, at most 8."""
    import os  # noqa: PLC0415 - tiny, keeps module import cheap to read

    return max(1, min(8, os.cpu_count() or 1))


def resize(img: Image.Image, pp: PreprocessConfig) -> Image.Image:
    """Resize an RGB image to the network input size with the configured policy."""
    size = (pp.width, pp.height)
    resample = _RESAMPLE[pp.interpolation]
    if pp.resize == "squash":
        # reducing_gap: Pillow first shrinks by an integer factor (fast box filter),
        # which is both quicker and less aliased on big photos.
        return img.resize(size, resample, reducing_gap=3.0)
    scale = min(pp.width / img.width, pp.height / img.height)
    inner = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    fill = tuple(round(c * 255) for c in pp.mean)
    canvas = Image.new("RGB", size, fill)
    canvas.paste(
        img.resize(inner, resample, reducing_gap=3.0),
        ((pp.width - inner[0]) // 2, (pp.height - inner[1]) // 2),
    )
    return canvas


def preprocess(img: Image.Image, pp: PreprocessConfig) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Resize and normalise one RGB image to a ``(3, H, W)`` float32 array."""
    arr = np.asarray(resize(img, pp), dtype=np.float32)
    arr *= 1.0 / 255.0
    arr -= np.asarray(pp.mean, dtype=np.float32)
    arr /= np.asarray(pp.std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def to_batch(arrays: Sequence[np.ndarray[Any, Any]]) -> torch.Tensor:
    """Stack preprocessed arrays into a ``(B, 3, H, W)`` tensor."""
    return torch.from_numpy(np.stack(arrays))


def thread_map(fn: Callable[[_T], _R], items: Iterable[_T], workers: int) -> Iterator[_R]:
    """Map ``fn`` over ``items`` in threads, yielding results in input order.

    Pillow releases the GIL while decoding and resizing, so threads scale on images.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ecomarine-decode") as pool:
        yield from pool.map(fn, items)


def load_batch(sources: Sequence[ImageSource], pp: PreprocessConfig, workers: int) -> torch.Tensor:
    """Decode (JPEG draft mode at the input scale), resize and normalise, in threads.

    Raises:
        InvalidImageError: If any source cannot be read.
    """

    def one(source: ImageSource) -> np.ndarray[Any, np.dtype[np.float32]]:
        return preprocess(load_image(source, target_size=(pp.width, pp.height)), pp)

    return to_batch(list(thread_map(one, sources, min(workers, len(sources)))))
