"""Tests for training.data.images: every pixel format, EXIF orientation, size limits, corrupt input."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from training.data.images import ImageError, image_digest, load_image, load_reduced, to_rgb_uint8


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _png_with_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width×height (1-bit gray) followed by a tiny, truncated IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(12, 20, 3), dtype=np.uint8)


def test_rgb_png_roundtrip_from_path_str_and_bytes(tmp_path: Path, rgb: np.ndarray) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(rgb).save(path)
    for source in (path, str(path), path.read_bytes()):
        out = load_image(source)
        assert out.dtype == np.uint8 and out.shape == (12, 20, 3)
        np.testing.assert_array_equal(out, rgb)


def test_grayscale_is_replicated_to_three_channels() -> None:
    gray = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8
    out = load_image(_encode(Image.fromarray(gray, "L"), "PNG"))
    assert out.shape == (5, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_sixteen_bit_png_uses_full_range() -> None:
    values = np.array([[0, 257 * 100, 65535, 128, 65280]], dtype=np.uint16)
    data = _encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode in {"I;16", "I"}
    out = load_image(data)
    np.testing.assert_array_equal(out[0, :, 0], [0, 100, 255, 0, 254])


def test_sixteen_bit_big_endian_tiff() -> None:
    values = np.array([[0, 257 * 7, 65535]], dtype=">u2")
    image = Image.fromarray(values)
    assert image.mode == "I;16B"
    out = load_image(_encode(image, "TIFF"))
    np.testing.assert_array_equal(out[0, :, 1], [0, 7, 255])


def test_float_tiff_in_unit_range_and_outside() -> None:
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    out = load_image(_encode(Image.fromarray(unit, "F"), "TIFF"))
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])
    wide = np.array([[-10.0, 0.0, 10.0]], dtype=np.float32)
    out = load_image(_encode(Image.fromarray(wide, "F"), "TIFF"))
    np.testing.assert_array_equal(out[0, :, 2], [0, 128, 255])


def test_palette_image_and_palette_transparency() -> None:
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[:, :2] = (200, 10, 10)
    rgb[:, 2:] = (10, 10, 200)
    pal = Image.fromarray(rgb).quantize(colors=2)
    assert pal.mode == "P"
    out = load_image(_encode(pal, "PNG"))
    np.testing.assert_array_equal(out, rgb)
    index_of_blue = int(np.asarray(pal)[0, 3])
    out = load_image(_encode(pal, "PNG", transparency=index_of_blue))
    np.testing.assert_array_equal(out[:, :2], rgb[:, :2])
    assert (out[:, 2:] == 255).all(), "transparent palette entry must become white"


def test_rgba_and_la_composite_on_white() -> None:
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., :3] = (0, 100, 200)
    rgba[..., 3] = [[0, 255, 128], [0, 255, 128]]
    out = load_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], [0, 100, 200])
    np.testing.assert_array_equal(out[0, 2], [127, 177, 227])
    la = np.stack([np.full((2, 2), 40, np.uint8), np.array([[0, 255], [255, 0]], np.uint8)], axis=-1)
    out = load_image(_encode(Image.fromarray(la, "LA"), "PNG"))
    np.testing.assert_array_equal(out[:, :, 0], [[255, 40], [40, 255]])


def test_cmyk_jpeg_becomes_rgb() -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    out = load_image(_encode(cmyk, "JPEG", quality=95))
    assert out.shape == (8, 8, 3)
    assert out[..., 0].mean() > 200 and out[..., 1].mean() < 50 and out[..., 2].mean() < 50


def test_exif_orientation_rotates_like_a_browser() -> None:
    # 40 wide × 20 high: red on the left, blue on the right.
    raw = np.zeros((20, 40, 3), dtype=np.uint8)
    raw[:, :20] = (255, 0, 0)
    raw[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = _encode(Image.fromarray(raw), "JPEG", exif=exif, quality=95)
    out = load_image(data)
    assert out.shape == (40, 20, 3)
    expected = np.rot90(raw, k=-1)
    assert np.abs(out.astype(int) - expected.astype(int)).mean() < 8
    assert out[:15, :, 0].mean() > 200, "left (red) edge must be on top after rotating clockwise"
    assert out[25:, :, 2].mean() > 200


def test_first_frame_of_animated_gif() -> None:
    frames = [Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = load_image(buf.getvalue())
    assert out[..., 0].min() > 200 and out[..., 1].max() < 50


def test_huge_header_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels must not be decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    data = _png_with_header(50_000, 50_000)
    assert len(data) < 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match="2500000000") as info:
            load_image(data)
    assert "100000000" in str(info.value)


def test_size_between_pil_warning_and_limit_names_size_and_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    data = _png_with_header(12_000, 10_000)  # 120 M pixels: PIL only warns, our limit refuses
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match=r"12000×10000.*120000000.*100000000"):
            load_image(data)


def test_max_pixels_parameter(rgb: np.ndarray) -> None:
    data = _encode(Image.fromarray(rgb), "PNG")
    with pytest.raises(ImageError, match="240 pixels.*limit of 239"):
        load_image(data, max_pixels=239)
    assert load_image(data, max_pixels=240).shape == (12, 20, 3)
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(data, max_pixels=0)


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, bytes(range(256)) * 4],
)
def test_non_image_bytes_raise_image_error(data: bytes) -> None:
    with pytest.raises(ImageError, match=f"<{len(data)} bytes>"):
        load_image(data)


def test_truncated_files_raise_image_error(tmp_path: Path, rgb: np.ndarray) -> None:
    big = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for fmt in ("PNG", "JPEG"):
        data = _encode(Image.fromarray(big), fmt)
        path = tmp_path / f"cut.{fmt.lower()}"
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageError, match="cut"):
            load_image(path)


def test_missing_file_names_path(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(TypeError):
        load_image(123)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("array", "expected"),
    [
        (np.array([[0, 255]], np.uint8), [0, 255]),
        (np.array([[[0], [255]]], np.uint8), [0, 255]),
        (np.array([[0, 65535]], np.uint16), [0, 255]),
        (np.array([[False, True]]), [0, 255]),
        (np.array([[0.0, 1.0]], np.float32), [0, 255]),
        (np.array([[3.0, 5.0]]), [0, 255]),
        (np.array([[np.nan, 1.0]]), [0, 255]),
        (np.array([[[9, 0], [9, 255]]], np.uint8), [255, 9]),
    ],
)
def test_to_rgb_uint8_dtypes_and_shapes(array: np.ndarray, expected: list[int]) -> None:
    out = to_rgb_uint8(array)
    assert out.dtype == np.uint8 and out.shape == (1, 2, 3)
    np.testing.assert_array_equal(out[0, :, 0], expected)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_to_rgb_uint8_copies_rgb_and_keeps_rgba_colour(rgb: np.ndarray) -> None:
    out = to_rgb_uint8(rgb)
    np.testing.assert_array_equal(out, rgb)
    assert not np.shares_memory(out, rgb)
    rgba = np.concatenate([rgb, np.full((12, 20, 1), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(to_rgb_uint8(rgba), rgb)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((2, 2, 5), np.uint8), r"\(2, 2, 5\)"),
        (np.zeros((2,), np.uint8), r"\(2,\)"),
        (np.zeros((0, 4, 3), np.uint8), "empty"),
        (np.zeros((2, 2), np.int64), "int64"),
        (np.zeros((2, 2), np.complex64), "complex64"),
    ],
)
def test_to_rgb_uint8_rejects_bad_arrays(array: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_rgb_uint8(array)


def test_image_digest_depends_on_content_shape_and_dtype(rgb: np.ndarray) -> None:
    digest = image_digest(rgb)
    assert digest == image_digest(rgb.copy())
    assert len(digest) == 32
    changed = rgb.copy()
    changed[0, 0, 0] ^= 1
    assert image_digest(changed) != digest
    assert image_digest(rgb.reshape(20, 12, 3)) != digest
    assert image_digest(rgb.view(np.int8)) != digest
    assert image_digest(np.asfortranarray(rgb)) == digest


def _jpeg(height: int, width: int, orientation: int | None = None) -> bytes:
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None] * np.ones((height, 1, 3), np.float32)
    image = Image.fromarray(ramp.astype(np.uint8))
    buffer = io.BytesIO()
    if orientation is None:
        image.save(buffer, "JPEG", quality=90)
    else:
        exif = image.getexif()
        exif[0x0112] = orientation
        image.save(buffer, "JPEG", quality=90, exif=exif)
    return buffer.getvalue()


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_that_keeps_the_models_size() -> None:
    reduced = load_reduced(_jpeg(1500, 2100), 10_000_000, 512)
    assert reduced.original_size == (1500, 2100)
    assert reduced.pixels.shape == (375, 525, 3)  # 1/4 scale, still 512 px or more; 1/8 would be less
    whole = load_image(_jpeg(1500, 2100))
    quarter = whole[1::4, 1::4].astype(np.int16)[:375, :525]
    assert np.abs(reduced.pixels.astype(np.int16) - quarter).mean() < 6  # the same picture, smaller


def test_reduced_decoding_keeps_the_displayed_size_of_a_turned_photo() -> None:
    reduced = load_reduced(_jpeg(1200, 1800, orientation=6), 10_000_000, 256)
    assert reduced.original_size == (1800, 1200)  # EXIF 6: shown a quarter turn round
    assert reduced.pixels.shape[:2] == (450, 300)
    assert load_image(_jpeg(1200, 1800, orientation=6)).shape[:2] == (1800, 1200)


def test_small_jpegs_and_other_formats_are_decoded_whole() -> None:
    small = load_reduced(_jpeg(600, 800), 10_000_000, 512)
    assert small.pixels.shape[:2] == small.original_size == (600, 800)
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((1500, 2100, 3), np.uint8)).save(buffer, "PNG")
    png = load_reduced(buffer.getvalue(), 10_000_000, 512)
    assert png.pixels.shape[:2] == png.original_size == (1500, 2100)
