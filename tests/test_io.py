from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ecomarine import ImageTooLargeError, InvalidImageError, load_image
from ecomarine.io import describe_source, get_max_pixels, set_max_pixels


def _encode(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _gradient(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None].repeat(width, 1)
    arr = np.stack([x, y, 255 - x], axis=2).round().astype(np.uint8)
    return Image.fromarray(arr)


# --- every source type -------------------------------------------------------------


def test_path_str_pathlike_bytes_file_pil_numpy_agree(tmp_path: Path) -> None:
    data = _encode(_gradient(), "PNG")
    path = tmp_path / "g.png"
    path.write_bytes(data)
    ref = np.asarray(load_image(path))
    assert ref.shape == (48, 64, 3)
    for source in (str(path), data, bytearray(data), io.BytesIO(data), Image.open(path), ref):
        out = load_image(source)
        assert out.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(out), ref)
    with path.open("rb") as fh:
        np.testing.assert_array_equal(np.asarray(load_image(fh)), ref)
        assert not fh.closed  # we never close the caller's file


def test_non_seekable_stream_is_buffered() -> None:
    data = _encode(_gradient(), "PNG")

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self._buf = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def readinto(self, b: bytearray) -> int:  # type: ignore[override]
            chunk = self._buf.read(len(b))
            b[: len(chunk)] = chunk
            return len(chunk)

    assert load_image(Pipe()).size == (64, 48)


def test_real_photo(whale_jpeg: Path) -> None:
    img = load_image(whale_jpeg)
    assert img.mode == "RGB"
    assert min(img.size) > 32


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"])
def test_formats(fmt: str) -> None:
    img = load_image(_encode(_gradient(), fmt))
    assert img.mode == "RGB"
    assert img.size == (64, 48)


# --- modes ---------------------------------------------------------------------------


def test_one_by_one() -> None:
    img = load_image(_encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"))
    assert img.size == (1, 1)
    assert img.getpixel((0, 0)) == (10, 20, 30)


def test_grayscale_l() -> None:
    gray = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    out = np.asarray(load_image(_encode(gray, "PNG")))
    assert out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out[..., 0], np.asarray(gray))
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_la_composited_on_white() -> None:
    la = Image.new("LA", (4, 4), (0, 0))  # black, fully transparent
    la.putpixel((0, 0), (0, 255))  # one opaque black pixel
    out = load_image(_encode(la, "PNG"))
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((1, 1)) == (255, 255, 255)


def test_palette_with_transparency() -> None:
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((1, 1), 1)
    data = _encode(pal, "PNG", transparency=0)  # index 0 (red) is transparent
    raw = Image.open(io.BytesIO(data))
    assert raw.mode == "P"
    assert "transparency" in raw.info
    out = load_image(data)
    assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent red -> white
    assert out.getpixel((1, 1)) == (0, 0, 255)


def test_palette_without_transparency() -> None:
    pal = Image.new("P", (2, 2), 1)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    assert load_image(_encode(pal, "PNG")).getpixel((0, 0)) == (0, 255, 0)


def test_rgba_composited_on_white() -> None:
    rgba = Image.new("RGBA", (3, 1), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    out = load_image(_encode(rgba, "PNG"))
    assert out.getpixel((0, 0)) == (255, 0, 0)
    assert out.getpixel((2, 0)) == (255, 255, 255)
    mid = out.getpixel((1, 0))
    assert isinstance(mid, tuple)
    assert all(120 <= c <= 135 for c in mid)  # half-transparent black over white


def test_cmyk_jpeg() -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    data = _encode(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    r, g, b = np.asarray(load_image(data)).reshape(-1, 3).mean(axis=0)
    assert r > 200
    assert g < 60
    assert b < 60


def test_sixteen_bit_png() -> None:
    values = (np.arange(16, dtype=np.uint32).reshape(4, 4) * 4369).astype(np.uint16)
    img16 = Image.fromarray(values)
    data = _encode(img16, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = np.asarray(load_image(data))[..., 0]
    np.testing.assert_array_equal(out, np.rint(values / 257.0).astype(np.uint8))


def test_modes_i_and_f() -> None:
    ints = Image.fromarray(np.array([[0, 100], [200, 255]], dtype=np.int32), mode="I")
    np.testing.assert_array_equal(np.asarray(load_image(ints))[..., 0], [[0, 100], [200, 255]])
    floats = Image.fromarray(np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32), mode="F")
    np.testing.assert_array_equal(np.asarray(load_image(floats))[..., 1], [[0, 128], [255, 64]])
    wide = Image.fromarray(np.array([[-5.0, 5.0]], dtype=np.float32), mode="F")
    np.testing.assert_array_equal(np.asarray(load_image(wide))[..., 2], [[0, 255]])


def test_mode_1() -> None:
    bw = Image.new("1", (2, 1), 0)
    bw.putpixel((1, 0), 1)
    assert list(np.asarray(load_image(bw))[0, :, 0]) == [0, 255]


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.full((2, 3), 7, np.uint8), 7),
        (np.full((2, 3, 3), 9, np.uint8), 9),
        (np.full((2, 3, 1), 11, np.uint8), 11),
        (np.full((2, 3, 3), 0.5, np.float32), 128),
        (np.full((2, 3), 65535, np.uint16), 255),
        (np.ones((2, 3), bool), 255),
    ],
)
def test_numpy_arrays(array: np.ndarray, expected: int) -> None:
    out = np.asarray(load_image(array))
    assert out.shape == (2, 3, 3)
    assert (out == expected).all()


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((2, 3, 2), np.uint8),
        np.zeros((2,), np.uint8),
        np.full((2, 2), np.nan, np.float32),
        np.full((2, 2), 1000.0),
        np.zeros((0, 4, 3), np.uint8),
        np.zeros((2, 2), np.complex64),
    ],
)
def test_bad_numpy_arrays(array: np.ndarray) -> None:
    with pytest.raises(InvalidImageError, match="ndarray"):
        load_image(array)


# --- EXIF orientation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("orientation", "transform"),
    [
        (1, lambda a: a),
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # camera rotated: display 90 deg clockwise
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_exif_orientation_pixelwise(orientation: int, transform: object) -> None:
    # Four flat 16x16 quadrants survive JPEG well enough to compare pixel-wise.
    arr = np.zeros((32, 48, 3), np.uint8)
    arr[:16, :24] = (255, 0, 0)
    arr[:16, 24:] = (0, 255, 0)
    arr[16:, :24] = (0, 0, 255)
    arr[16:, 24:] = (255, 255, 0)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(Image.fromarray(arr), "JPEG", quality=100, subsampling=0, exif=exif.tobytes())
    out = np.asarray(load_image(data)).astype(int)
    expected = transform(arr).astype(int)  # type: ignore[operator]
    assert out.shape == expected.shape
    assert np.abs(out - expected).mean() < 4


def test_broken_exif_orientation_is_ignored() -> None:
    exif = Image.Exif()
    exif[0x0112] = 99  # not a valid orientation
    data = _encode(_gradient(), "JPEG", exif=exif.tobytes())
    assert load_image(data).size == (64, 48)


# --- draft decoding ------------------------------------------------------------------


def test_jpeg_draft_decodes_at_reduced_scale() -> None:
    data = _encode(_gradient(1600, 1200), "JPEG", quality=90)
    full = load_image(data)
    small = load_image(data, target_size=(256, 96))
    assert full.size == (1600, 1200)
    assert small.size == (400, 300)  # 1/4 scale still covers 256 in both axes
    assert min(small.size) >= 256
    # Drafting is for JPEG only; PNG is decoded in full.
    assert load_image(_encode(_gradient(600, 400), "PNG"), target_size=(64, 64)).size == (600, 400)


def test_draft_respects_rotation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(_gradient(1600, 800), "JPEG", exif=exif.tobytes())
    out = load_image(data, target_size=(100, 300))
    assert out.size[0] < out.size[1]  # rotated to portrait
    assert min(out.size) >= 300


# --- errors --------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match=r"nope\.jpg: no such file"):
        load_image(tmp_path / "nope.jpg")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidImageError, match="is a directory"):
        load_image(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(InvalidImageError, match=r"empty\.jpg: file is empty"):
        load_image(path)


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = _encode(_gradient(256, 256), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidImageError, match=r"cut\.jpg: .*truncated"):
        load_image(path)


def test_corrupt_bytes_and_non_image(tmp_path: Path) -> None:
    data = bytearray(_encode(_gradient(), "PNG"))
    data[40:80] = b"\x00" * 40
    with pytest.raises(InvalidImageError, match="bytes"):
        load_image(bytes(data))
    text = tmp_path / "notes.jpg"
    text.write_text("these are field notes, not a photo")
    with pytest.raises(InvalidImageError, match="not a recognised image format"):
        load_image(text)


def test_unsupported_type() -> None:
    with pytest.raises(InvalidImageError, match="unsupported source type int"):
        load_image(42)  # type: ignore[arg-type]


def test_text_mode_file(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("hello")
    with path.open() as fh, pytest.raises(InvalidImageError):
        load_image(fh)  # type: ignore[arg-type]


def test_heif_without_plugin_is_explained() -> None:
    pytest.importorskip("PIL")
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        fake = b"\x00\x00\x00\x18ftypheic" + b"\x00" * 64
        with pytest.raises(InvalidImageError, match="pillow-heif"):
            load_image(fake)
    else:
        pytest.skip("pillow-heif is installed")


# --- the pixel cap -------------------------------------------------------------------


def test_over_cap_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _encode(Image.new("L", (4000, 3000)), "PNG")  # small file, 12 MP

    def boom(self: Image.Image) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(Image.Image, "load", boom)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", boom)
    with pytest.raises(ImageTooLargeError, match="4000x3000") as info:
        load_image(data, max_pixels=1_000_000)
    assert info.value.pixels == 12_000_000


def test_decompression_bomb_header() -> None:
    # A PNG header claiming 100000 x 100000: far beyond both our cap and Pillow's.
    data = _encode(Image.new("L", (1, 1)), "PNG")
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    bomb = data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    bomb += data[8 + 25 :]
    with pytest.raises(ImageTooLargeError):
        load_image(bomb)


def test_pil_and_numpy_sources_respect_cap() -> None:
    with pytest.raises(ImageTooLargeError):
        load_image(Image.new("RGB", (100, 100)), max_pixels=9_999)
    with pytest.raises(ImageTooLargeError):
        load_image(np.zeros((100, 100), np.uint8), max_pixels=9_999)


def test_set_max_pixels() -> None:
    before = get_max_pixels()
    try:
        set_max_pixels(100)
        with pytest.raises(ImageTooLargeError):
            load_image(np.zeros((20, 20), np.uint8))
        with pytest.raises(ValueError, match="positive"):
            set_max_pixels(0)
    finally:
        set_max_pixels(before)
    assert get_max_pixels() == before


def test_describe_source() -> None:
    assert describe_source(b"abc") == "<bytes: 3 bytes>"
    assert describe_source(Path("a/b.jpg")) == str(Path("a/b.jpg"))
    assert "ndarray" in describe_source(np.zeros((2, 2)))


# --- property test -------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=4096))
def test_random_bytes_yield_rgb_or_invalid(data: bytes) -> None:
    try:
        img = load_image(data)
    except InvalidImageError:
        return
    assert img.mode == "RGB"


_PNG = _encode(_gradient(16, 16), "PNG")
_JPEG = _encode(_gradient(16, 16), "JPEG")


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([_PNG, _JPEG]),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
    st.integers(0, 10_000),
)
def test_mutated_real_files_yield_rgb_or_invalid(
    base: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(base)
    for pos, value in flips:
        data[pos % len(data)] = value
    try:
        img = load_image(bytes(data[: max(1, len(data) - cut % len(data))]))
    except InvalidImageError:
        return
    assert img.mode == "RGB"
