"""Safe image loading: any source to an RGB :class:`PIL.Image.Image`.

:func:`load_image` is the one entry point every other stage uses. It reads the header
first and refuses images over a pixel cap *before* decoding them, applies the EXIF
orientation, converts every Pillow mode to RGB with sensible tone mapping, and turns
every failure into :class:`~ecomarine.errors.InvalidImageError` naming the source.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ._files import MiB, open_regular, read_regular
from .errors import EcomarineError, ImageTooLargeError, InvalidImageError

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_PIXELS",
    "MAX_ASPECT_RATIO",
    "ImageSource",
    "content_sha256",
    "describe_source",
    "get_max_file_bytes",
    "get_max_pixels",
    "load_image",
    "read_image_file",
    "set_max_file_bytes",
    "set_max_pixels",
    "to_rgb",
]

logger = logging.getLogger(__name__)

#: Default pixel cap: 60 megapixels covers every current camera body (a 50 MP frame is
#: 8,688 x 5,792) and stays well below Pillow's 89-megapixel decompression-bomb warning.
DEFAULT_MAX_PIXELS = 60_000_000
#: Default cap on an image file's size, checked before a byte is read: a 60-megapixel
#: 16-bit RGB TIFF is 360 MB uncompressed.
DEFAULT_MAX_FILE_BYTES = 512 * MiB
#: Longer side over shorter side beyond which an image is refused: no camera or
#: panorama comes near it, and resizing a 1 x 10,000,000 strip to a network input would
#: need gigabytes of intermediate pixels.
MAX_ASPECT_RATIO = 100

ImageSource = Union[  # noqa: UP007 - a runtime alias; keep it readable on Python 3.10
    str, os.PathLike[str], bytes, bytearray, memoryview, IO[bytes], Image.Image, np.ndarray
]

_max_pixels = DEFAULT_MAX_PIXELS
_max_file_bytes = DEFAULT_MAX_FILE_BYTES
_heif_lock = threading.Lock()
_heif_registered = False

# ISO-BMFF brands of HEIF/HEIC stills (bytes 8..12 after the 'ftyp' box type).
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"}


def _positive_int(value: int, name: str) -> int:
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def set_max_pixels(max_pixels: int) -> None:
    """Set the process-wide default pixel cap used by :func:`load_image`.

    Args:
        max_pixels: Largest accepted ``width * height``; must be positive.

    Raises:
        ValueError: If ``max_pixels`` is not a positive integer.
    """
    global _max_pixels  # noqa: PLW0603 - a deliberate process-wide setting
    _max_pixels = _positive_int(max_pixels, "max_pixels")


def get_max_pixels() -> int:
    """Return the process-wide default pixel cap."""
    return _max_pixels


def set_max_file_bytes(max_bytes: int) -> None:
    """Set the process-wide cap on an image file's size (bytes).

    Raises:
        ValueError: If ``max_bytes`` is not a positive integer.
    """
    global _max_file_bytes  # noqa: PLW0603 - a deliberate process-wide setting
    _max_file_bytes = _positive_int(max_bytes, "max_bytes")


def get_max_file_bytes() -> int:
    """Return the process-wide cap on an image file's size (bytes)."""
    return _max_file_bytes


def _file_problem(name: str) -> Callable[[str], InvalidImageError]:
    def fail(reason: str) -> InvalidImageError:
        if reason == "is a directory, not a file":
            reason = "is a directory, not an image file"
        return InvalidImageError(name, reason)

    return fail


def read_image_file(path: str | os.PathLike[str], name: str | None = None) -> bytes:
    """The bytes of an image file: a regular file within :func:`get_max_file_bytes`.

    Raises:
        InvalidImageError: Missing, a directory, a FIFO or device, too large, unreadable.
    """
    label = describe_source(path) if name is None else name
    return read_regular(path, _file_problem(label), max_bytes=get_max_file_bytes())


def content_sha256(source: object) -> str | None:
    """SHA-256 of a photo's bytes (a file, streamed; or bytes), else ``None``.

    Predictions and gallery records carry the same hash, so a photo is recognised
    wherever it was copied or renamed.

    Raises:
        InvalidImageError: For a path that is not a readable regular file.
    """
    if isinstance(source, bytes | bytearray | memoryview):
        return hashlib.sha256(source).hexdigest()
    if not isinstance(source, str | os.PathLike):
        return None
    name = describe_source(source)
    digest = hashlib.sha256()
    with open_regular(source, _file_problem(name), max_bytes=get_max_file_bytes()) as fh:
        try:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        except OSError as exc:
            raise InvalidImageError(name, f"cannot read file ({exc.strerror or exc})") from exc
    return digest.hexdigest()


def describe_source(source: object) -> str:
    """Return a short, human-readable name for an image source (used in messages)."""
    if isinstance(source, str | os.PathLike):
        return str(os.fspath(source))
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<bytes: {len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL.Image {source.mode} {source.width}x{source.height}>"
    if isinstance(source, np.ndarray):
        return f"<ndarray {source.dtype} {tuple(source.shape)}>"
    name = getattr(source, "name", None)
    if isinstance(name, str):
        return name
    return f"<{type(source).__name__}>"


def load_image(
    source: ImageSource,
    *,
    max_pixels: int | None = None,
    target_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Load an image from any supported source as an RGB :class:`PIL.Image.Image`.

    Args:
        source: A path (``str`` or ``os.PathLike``), encoded bytes, a binary file object,
            a :class:`PIL.Image.Image`, or an ``HxW`` / ``HxWx3`` / ``HxWx4`` NumPy array
            (``uint8``; ``bool``, ``uint16`` and floats in [0, 1] are scaled).
        max_pixels: Largest accepted ``width * height``; defaults to
            :func:`get_max_pixels`. Checked from the header, before pixels are decoded.
        target_size: ``(width, height)`` the caller will resize to. JPEGs are then
            decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still covers this size
            in both dimensions, whatever the EXIF orientation, which makes large photos
            several times cheaper to decode.

    Returns:
        An RGB image with EXIF orientation applied. Transparent pixels are composited
        on white; 16-bit and float images are tone-mapped to 8 bits.

    Raises:
        ImageTooLargeError: The image has more than ``max_pixels`` pixels.
        InvalidImageError: The source is missing, a directory, empty, truncated, corrupt,
            not an image, or of an unsupported type. The message names the source.
    """
    name = describe_source(source)
    cap = get_max_pixels() if max_pixels is None else max_pixels
    if isinstance(source, Image.Image):
        _check_size(name, source.width, source.height, cap)
        return to_rgb(_apply_exif_orientation(source, name), name)
    if isinstance(source, np.ndarray):
        return _from_array(source, name, cap)
    with _open_stream(source, name) as stream:
        return _decode(stream, name, cap, target_size)


def _check_size(name: str, width: int, height: int, cap: int) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImageError(name, f"image has zero size ({width}x{height})")
    if width * height > cap:
        raise ImageTooLargeError(name, width * height, cap, f"{width}x{height}")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise InvalidImageError(
            name, f"absurd aspect ratio ({width}x{height}; at most {MAX_ASPECT_RATIO}:1)"
        )


def _open_stream(source: object, name: str) -> AbstractContextManager[IO[bytes]]:
    if isinstance(source, str | os.PathLike):
        return open_regular(
            Path(os.fspath(source)), _file_problem(name), max_bytes=get_max_file_bytes()
        )
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(bytes(source))
    read = getattr(source, "read", None)
    if callable(read):
        seekable = getattr(source, "seekable", None)
        if callable(seekable) and seekable():
            return contextlib.nullcontext(source)  # type: ignore[arg-type] # caller owns it
        # Pillow needs to seek; buffer streams such as sockets or pipes.
        try:
            data = read()
        except OSError as exc:
            raise InvalidImageError(name, f"cannot read stream ({exc})") from exc
        if not isinstance(data, bytes | bytearray):
            raise InvalidImageError(name, "file object must be opened in binary mode")
        return io.BytesIO(bytes(data))
    raise InvalidImageError(
        name,
        f"unsupported source type {type(source).__name__}; expected a path, bytes, a binary "
        "file object, a PIL.Image or a numpy array",
    )


def _looks_like_heif(head: bytes) -> bool:
    return len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def _register_heif(name: str) -> None:
    global _heif_registered  # noqa: PLW0603 - register the plugin once per process
    with _heif_lock:
        if _heif_registered:
            return
        try:
            import pillow_heif  # noqa: PLC0415 - optional dependency, imported on demand
        except ImportError as exc:
            raise InvalidImageError(
                name,
                "HEIC/HEIF image, but the optional package pillow-heif is not installed "
                "(pip install 'ecomarine[heif]')",
            ) from exc
        pillow_heif.register_heif_opener()
        _heif_registered = True


def _decode(
    stream: IO[bytes], name: str, cap: int, target_size: tuple[int, int] | None
) -> Image.Image:
    start = stream.tell()
    head = stream.read(16)
    if not head:
        raise InvalidImageError(name, "file is empty")
    stream.seek(start)
    if _looks_like_heif(head):
        _register_heif(name)
    try:
        with warnings.catch_warnings():
            # We enforce our own cap below; Pillow's warning would be noise (or an error
            # under -W error) for images between its limit and ours.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(stream)
            _check_size(name, img.width, img.height, cap)
            if target_size is not None and img.format == "JPEG":
                side = max(1, int(max(target_size)))
                # A square request covers both orientations: EXIF may swap the axes.
                img.draft(img.mode, (side, side))
            img.load()
    except EcomarineError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(name, None, cap, str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise InvalidImageError(name, "not a recognised image format") from exc
    except MemoryError as exc:
        raise InvalidImageError(name, "not enough memory to decode") from exc
    except Exception as exc:
        # Pillow's plugins raise many types (OSError, SyntaxError, struct.error,
        # IndexError, ...) on corrupt data; at this trust boundary they all mean the same.
        raise InvalidImageError(name, _decode_reason(exc)) from exc
    return to_rgb(_apply_exif_orientation(img, name), name)


def _decode_reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    if "truncated" in text.lower():
        return f"file is truncated ({text})"
    return f"corrupt or unsupported image data ({type(exc).__name__}: {text})"


def _apply_exif_orientation(img: Image.Image, name: str) -> Image.Image:
    try:
        out = ImageOps.exif_transpose(img)
    except Exception as exc:  # broken EXIF must not cost the photo
        logger.warning("ignoring unreadable EXIF orientation in %s: %s", name, exc)
        return img
    return img if out is None else out


def to_rgb(img: Image.Image, name: str = "<image>") -> Image.Image:
    """Convert an image of any Pillow mode to RGB.

    Transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent colour) is composited
    on white. ``I;16`` is scaled by 1/257; ``I`` and ``F`` are scaled from their natural
    range (8-bit, 16-bit, or [0, 1] for floats) or, outside it, min-max stretched.

    Raises:
        InvalidImageError: When the pixels cannot be converted.
    """
    mode = img.mode
    try:
        if mode == "RGB":
            return img
        if mode == "P":
            if "transparency" not in img.info:
                return img.convert("RGB")
            img, mode = img.convert("RGBA"), "RGBA"
        if mode in ("LA", "La", "PA", "RGBa"):
            img, mode = img.convert("RGBA"), "RGBA"
        if mode == "RGBA":
            background = Image.new("RGB", img.size, (255, 255, 255))
            background.paste(img, mask=img.getchannel("A"))
            return background
        if mode.startswith("I") or mode == "F":
            gray = _tone_map(np.asarray(img), mode)
            return Image.fromarray(gray).convert("RGB")
        if mode == "1":
            return img.convert("L").convert("RGB")
        return img.convert("RGB")
    except EcomarineError:
        raise
    except Exception as exc:
        raise InvalidImageError(name, f"cannot convert mode {mode} to RGB ({exc})") from exc


def _tone_map(arr: np.ndarray[Any, Any], mode: str) -> np.ndarray[Any, np.dtype[np.uint8]]:
    values = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if values.ndim == 3:  # multi-channel 16-bit: average to gray
        values = values.mean(axis=2)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode.startswith("I;16"):
        scaled = values / 257.0
    elif mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = values * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        scaled = values
    elif mode == "I" and lo >= 0.0 and hi <= 65535.0:
        scaled = values / 257.0
    else:
        scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    out: np.ndarray[Any, np.dtype[np.uint8]] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return out


def _from_array(arr: np.ndarray[Any, Any], name: str, cap: int) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise InvalidImageError(name, "array must be HxW, HxWx1, HxWx3 or HxWx4")
    height, width = int(arr.shape[0]), int(arr.shape[1])
    _check_size(name, width, height, cap)
    data = _array_to_uint8(arr, name)
    if data.ndim == 2:
        return Image.fromarray(data).convert("RGB")
    if data.shape[2] == 4:
        return to_rgb(Image.fromarray(np.ascontiguousarray(data), mode="RGBA"), name)
    return Image.fromarray(np.ascontiguousarray(data))


def _array_to_uint8(arr: np.ndarray[Any, Any], name: str) -> np.ndarray[Any, Any]:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        return (arr.astype(np.float64) / 257.0).round().astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating):
        values = arr.astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise InvalidImageError(name, "array contains NaN or infinite values")
        lo, hi = float(values.min()), float(values.max())
        if np.issubdtype(arr.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
            return (values * 255.0).round().astype(np.uint8)
        if lo >= 0.0 and hi <= 255.0:
            return values.round().astype(np.uint8)
        raise InvalidImageError(
            name, f"array values span [{lo:g}, {hi:g}]; expected [0, 1] floats or [0, 255]"
        )
    raise InvalidImageError(name, f"unsupported array dtype {arr.dtype}")
