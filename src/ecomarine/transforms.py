"""Preprocessing that travels with the weights: decode, resize, normalise, batch.

At inference, decode threads turn each photo into uint8 pixels just large enough
(:func:`load_pixels`: JPEG draft mode, then an integer box reduction) and resize them
to each network's input with PyTorch (:func:`resize_pixels`): its antialiased uint8
resize is faster than Pillow's on a CPU and matches Pillow's filters to
within a grey level or two. The batch is then normalised once, on the model's device
(:func:`normalize_batch`). Training caches keep Pillow's :func:`resize`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias
from PIL import Image

from ._threads import single_threaded_torch
from .config import PreprocessConfig
from .io import ImageSource, load_image

__all__ = [
    "decode_pool",
    "decode_size",
    "default_workers",
    "load_batch",
    "load_pixels",
    "normalize_batch",
    "preprocess",
    "resize",
    "resize_pixels",
    "thread_map",
]

_T = TypeVar("_T")
_R = TypeVar("_R")

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
# PyTorch's names for Pillow's filters ("nearest-exact" samples pixel centres, as Pillow).
_TORCH_MODE = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest-exact"}
#: Decoded pixels are box-reduced while they stay at least this many times the input
#: size (as Pillow's ``reducing_gap``): bounded memory, same quality.
REDUCING_GAP = 3
#: Most pixels handed to the resize: PyTorch's antialiased resize works in float32, so a
#: decoded photo costs about 16 bytes a pixel there. Only elongated images that the box
#: reduction above cannot shrink (its factor follows the shorter side) reach it.
DECODED_PIXEL_BUDGET = 16_000_000


def default_workers() -> int:
    """Decode threads to use by default: the CPU count, at most 8."""
    import os  # noqa: PLC0415 - tiny, keeps module import cheap to read

    return max(1, min(8, os.cpu_count() or 1))


def resize(img: Image.Image, pp: PreprocessConfig) -> Image.Image:
    """Resize an RGB image to the network input size with Pillow (training caches use it).

    Inference uses :func:`resize_pixels`, which agrees with this to a grey level or two.
    """
    size = (pp.width, pp.height)
    resample = _RESAMPLE[pp.interpolation]
    inner, (left, top) = _layout(img.width, img.height, pp)
    # reducing_gap: Pillow first shrinks by an integer factor (fast box filter).
    resized = img.resize(inner, resample, reducing_gap=float(REDUCING_GAP))
    if inner == size:
        return resized
    if pp.resize != "letterbox":
        return resized.crop((left, top, left + pp.width, top + pp.height))
    canvas = Image.new("RGB", size, _fill(pp))
    canvas.paste(resized, (left, top))
    return canvas


def _fill(pp: PreprocessConfig) -> tuple[int, int, int]:
    r, g, b = (round(c * 255) for c in pp.mean)
    return r, g, b


def _layout(
    width: int, height: int, pp: PreprocessConfig
) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(width, height)`` the photo is resized to, and where the input window lies.

    For ``"letterbox"`` the offset is where the photo is pasted on the input; for
    ``"squash"`` and ``"crop"`` it is the corner of the centre crop in the resized photo
    (torchvision's ``CenterCrop`` rounding, as timm and open_clip use it).
    """
    if pp.resize == "letterbox":
        scale = min(pp.width / width, pp.height / height)
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
        return (w, h), ((pp.width - w) // 2, (pp.height - h) // 2)
    sh, sw = pp.scaled_size()
    if pp.resize == "squash":
        w, h = sw, sh
    elif sh == sw:
        # torchvision's Resize(int): the shorter side to the size, the longer truncated.
        short, long_ = min(width, height), max(width, height)
        other = max(sh, int(sh * long_ / short))
        w, h = (sw, other) if width <= height else (other, sh)
    else:
        scale = max(sw / width, sh / height)
        w, h = max(sw, round(width * scale)), max(sh, round(height * scale))
    return (w, h), (round((w - pp.width) / 2.0), round((h - pp.height) / 2.0))


def decode_size(configs: Iterable[PreprocessConfig]) -> tuple[int, int]:
    """``(width, height)`` that decoded pixels must cover to serve every input size."""
    # Before a centre crop the photo is resized larger than the input (crop_pct < 1).
    sizes = [p.scaled_size() for p in configs]
    return max(w for _, w in sizes), max(h for h, _ in sizes)


def load_pixels(
    source: ImageSource, target_size: tuple[int, int], *, keep_aspect: bool = False
) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Decode a photo as ``(H, W, 3)`` uint8 pixels, just large enough for ``target_size``.

    JPEGs decode at a reduced DCT scale; any image still at least ``REDUCING_GAP`` times
    larger than ``target_size`` in both dimensions is then shrunk by an integer box
    filter, so a batch of decoded photos stays small whatever their format. An image
    still over :data:`DECODED_PIXEL_BUDGET` (a long strip) is box-reduced further: each
    axis on its own, or, with ``keep_aspect`` (letterboxed inputs), both alike.

    Raises:
        InvalidImageError: If the source cannot be read.
    """
    img = load_image(source, target_size=target_size)
    factor = min(img.width // target_size[0], img.height // target_size[1]) // REDUCING_GAP
    if factor >= 2:
        img = img.reduce(factor)
    if img.width * img.height > DECODED_PIXEL_BUDGET:
        if keep_aspect:
            f = math.ceil(math.sqrt(img.width * img.height / DECODED_PIXEL_BUDGET))
            img = img.reduce(f)
        else:
            fx = max(1, img.width // (target_size[0] * REDUCING_GAP))
            fy = max(1, img.height // (target_size[1] * REDUCING_GAP))
            img = img.reduce((fx, fy))
    # np.array copies: np.asarray on a PIL image is a read-only view torch cannot wrap.
    return np.array(img, dtype=np.uint8)


def resize_pixels(pixels: np.ndarray[Any, Any], pp: PreprocessConfig) -> torch.Tensor:
    """Resize ``(H, W, 3)`` uint8 pixels to the input size: an ``(h, w, 3)`` uint8 tensor.

    Antialiased like Pillow (see the module docstring); ``"letterbox"`` pads with the
    mean colour, ``"crop"`` (and ``"squash"`` with ``crop_pct < 1``) cuts the centre. Runs on the CPU, one photo at a time, so that decode threads can share
    the work (PyTorch releases the GIL).
    """
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8 pixels, got {pixels.shape} {pixels.dtype}")
    (w, h), (left, top) = _layout(pixels.shape[1], pixels.shape[0], pp)
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None]
    if (h, w) != tuple(x.shape[-2:]):
        mode = _TORCH_MODE[pp.interpolation]
        if mode == "nearest-exact":
            x = F.interpolate(x, size=(h, w), mode=mode)
        else:
            x = F.interpolate(x, size=(h, w), mode=mode, align_corners=False, antialias=True)
    inner = x[0].permute(1, 2, 0)
    if (h, w) == (pp.height, pp.width):
        return inner.contiguous()
    if pp.resize != "letterbox":
        return inner[top : top + pp.height, left : left + pp.width].contiguous()
    out = torch.empty((pp.height, pp.width, 3), dtype=torch.uint8)
    out[:] = torch.tensor(_fill(pp), dtype=torch.uint8)
    out[top : top + h, left : left + w] = inner
    return out


def normalize_batch(
    resized: Sequence[torch.Tensor],
    pp: PreprocessConfig,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Stack resized ``(H, W, 3)`` uint8 photos into a normalised float batch on ``device``.

    The pixels travel as uint8 (a quarter of the bytes). The result is ``(B, 3, H, W)``
    and channels-last in memory, the layout the convolutions want, with no extra copy.
    """
    x = torch.stack(list(resized))
    if x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected (H, W, 3) photos, got a stack of shape {tuple(x.shape)}")
    if device is not None:
        x = x.to(device, non_blocking=True)
    y = x.float()
    scale = torch.tensor([1.0 / (255.0 * s) for s in pp.std], device=y.device)
    shift = torch.tensor([-m / s for m, s in zip(pp.mean, pp.std, strict=True)], device=y.device)
    # (x / 255 - mean) / std as one multiply-add per channel, in place.
    torch.addcmul(shift, y, scale, out=y)
    return y.permute(0, 3, 1, 2)


def preprocess(img: Image.Image, pp: PreprocessConfig) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Resize and normalise one RGB image to a ``(3, H, W)`` float32 array.

    The same arithmetic as the batched inference path.
    """
    pixels = np.array(img.convert("RGB"), dtype=np.uint8)
    x = normalize_batch([resize_pixels(pixels, pp)], pp)[0]
    return np.ascontiguousarray(x.numpy())


def decode_pool(workers: int) -> ThreadPoolExecutor:
    """A pool of decode threads, each running PyTorch on itself alone."""
    return ThreadPoolExecutor(
        max_workers=workers,
        thread_name_prefix="ecomarine-decode",
        initializer=single_threaded_torch,
    )


def thread_map(fn: Callable[[_T], _R], items: Iterable[_T], workers: int) -> Iterator[_R]:
    """Map ``fn`` over ``items`` in threads, yielding results in input order.

    Pillow releases the GIL while decoding and resizing, so threads scale on images.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    with decode_pool(workers) as pool:
        yield from pool.map(fn, items)


def load_batch(
    sources: Sequence[ImageSource],
    pp: PreprocessConfig,
    workers: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Decode and resize in threads, then normalise as one batch.

    Raises:
        InvalidImageError: If any source cannot be read.
    """
    size = decode_size([pp])

    def one(source: ImageSource) -> torch.Tensor:
        return resize_pixels(load_pixels(source, size, keep_aspect=pp.resize != "squash"), pp)

    return normalize_batch(list(thread_map(one, sources, min(workers, len(sources)))), pp, device)
