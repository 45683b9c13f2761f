"""Turn any image (file, bytes or array) into the model's input: an H×W×3 uint8 RGB array.

Every place that reads pixels (datasets, the Label Studio export, the predictor) goes through
this module so that masks drawn in the browser line up with what the model sees:

- EXIF orientation is applied the way browsers (and so Label Studio) display the image.
- 16-bit data is scaled from the full 0..65535 range to 0..255, as browsers do.
- Transparent images are composited on white: Label Studio shows them on a white canvas, and a
  transparent pixel's hidden RGB is often garbage (black or leftover colour).
- Oversized images are refused from the header, before any pixel is decoded.
"""

from __future__ import annotations

import hashlib
import io
import math
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["IMAGE_SUFFIXES", "ImageError", "ReducedImage", "image_digest", "load_image", "load_reduced", "to_rgb_uint8"]

DEFAULT_MAX_PIXELS = 100_000_000
# File suffixes (lower case) treated as images when a folder is read; GIFs give their first frame.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

# Errors PIL and its plugins raise on malformed input; all become ImageError.
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    Image.DecompressionBombError,
)

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}


class ImageError(ValueError):
    """An image could not be read; the message names the source and the problem."""


@dataclass(frozen=True)
class ReducedImage:
    """An image decoded at a reduced JPEG scale for a model that needs only ``longest`` pixels on its
    longest side: ``pixels`` (H' x W' x 3 uint8) and the size it is displayed at, ``original_size``
    (H, W), which is where masks must land."""

    pixels: np.ndarray
    original_size: tuple[int, int]


def _describe(source: str | Path | bytes) -> str:
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<{len(source)} bytes>"
    return str(source)


def load_reduced(source: str | Path | bytes, max_pixels: int, longest: int) -> ReducedImage:
    """``load_image`` for a model input of ``longest`` pixels: a JPEG at least twice that size is
    decoded at a reduced DCT scale (1/2, 1/4 or 1/8, never below ``longest``), which is several
    times faster than decoding every pixel and resizing after; other images are decoded whole."""
    pixels, original = _load(source, max_pixels, longest)
    return ReducedImage(pixels, original or (int(pixels.shape[0]), int(pixels.shape[1])))


def load_image(source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file (path) or encoded image (bytes) as displayed by a browser.

    Args:
        source: a filesystem path (str or Path) or the encoded file content (bytes).
        max_pixels: images with width × height above this are refused before decoding.

    Returns:
        H×W×3 uint8 RGB array, rows top to bottom in display orientation (EXIF applied).
        Multi-frame files (GIF, TIFF) give their first frame.

    Raises:
        ImageError: missing file, non-image or corrupt/truncated data, an image larger than
            `max_pixels`, or a pixel format that cannot be converted.
    """
    return _load(source, max_pixels, None)[0]


def _load(source: str | Path | bytes, max_pixels: int, draft_longest: int | None
          ) -> tuple[np.ndarray, tuple[int, int] | None]:
    """The pixels, and the displayed size of the full image when it was decoded at a reduced scale."""
    if not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    name = _describe(source)
    if isinstance(source, bytes | bytearray | memoryview):
        stream: io.BufferedIOBase | io.BytesIO = io.BytesIO(bytes(source))
    elif isinstance(source, str | Path):
        try:
            stream = open(source, "rb")  # noqa: SIM115 - closed in the finally below
        except OSError as exc:
            raise ImageError(f"cannot open image {name}: {exc.strerror or exc}") from exc
    else:
        raise TypeError(f"image source must be a path or bytes, got {type(source).__name__}")
    try:
        return _decode(stream, name, max_pixels, draft_longest)
    finally:
        stream.close()


def _draft(image: Image.Image, longest: int) -> tuple[int, int] | None:
    """Ask PIL's JPEG decoder for a reduced scale that still gives ``longest`` pixels on the longest
    side; returns the displayed (H, W) of the full image when it did, else None."""
    width, height = image.size
    if image.format != "JPEG" or max(width, height) < 2 * longest:
        return None
    scale = longest / max(width, height)
    image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
    if image.size == (width, height):
        return None
    # EXIF orientations 5-8 turn the image a quarter: the displayed size swaps.
    turned = image.getexif().get(0x0112) in (5, 6, 7, 8)
    return (width, height) if turned else (height, width)


def _decode(stream: io.BufferedIOBase | io.BytesIO, name: str, max_pixels: int, draft_longest: int | None
            ) -> tuple[np.ndarray, tuple[int, int] | None]:
    # PIL warns above its own pixel limit; a test run with -W error (or an app that escalates
    # warnings) would turn that into an exception, and our own max_pixels check is the policy.
    # (catch_warnings is process-global; concurrent threads can at worst see this filter briefly.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(stream)
        except Image.DecompressionBombError as exc:
            # PIL refuses above 2 × Image.MAX_IMAGE_PIXELS while reading the header, before our
            # own check can run; its message carries the size, ours adds the limit.
            raise ImageError(
                f"image {name} refused before decoding: {exc} (limit max_pixels={max_pixels})"
            ) from exc
        except _DECODE_ERRORS as exc:
            raise ImageError(f"{name} is not a readable image: {exc}") from exc
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(
                f"image {name} is {width}×{height} = {width * height} pixels, "
                f"above the limit of {max_pixels} pixels"
            )
        try:
            original = _draft(image, draft_longest) if draft_longest else None
            image.load()
            image = ImageOps.exif_transpose(image)
            array = _to_array(image)
        except ImageError:
            raise
        except _DECODE_ERRORS as exc:
            raise ImageError(f"image {name} ({image.format}, {width}×{height}) is corrupt: {exc}") from exc
    try:
        return to_rgb_uint8(array), original
    except ValueError as exc:
        raise ImageError(f"image {name}: {exc}") from exc


def _to_array(image: Image.Image) -> np.ndarray:
    """Pixels as a numpy array in a form `to_rgb_uint8` understands (keeps 16-bit precision)."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        return np.asarray(image).astype(np.uint16)
    if mode == "I":
        # 32-bit int is how PIL has represented 16-bit grayscale PNGs; treat it as 16-bit.
        return np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
    if mode == "F":
        return np.asarray(image, dtype=np.float32)
    if mode == "1":
        return np.asarray(image, dtype=bool)
    if mode in {"L", "RGB", "RGBA", "LA"}:
        return np.asarray(image)
    if mode in {"P", "PA"}:
        has_alpha = mode == "PA" or "transparency" in image.info
        return np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    if mode in {"La", "RGBa"}:
        # Premultiplied alpha: undo it through PIL's own conversion.
        return np.asarray(image.convert("LA" if mode == "La" else "RGBA"))
    # CMYK, YCbCr, LAB, HSV, RGBX, ...: PIL's conversion (no ICC colour management).
    try:
        return np.asarray(image.convert("RGB"))
    except ValueError as exc:
        raise ImageError(f"unsupported pixel mode {mode!r}: {exc}") from exc


def to_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """Normalise an in-memory image to H×W×3 uint8 RGB.

    Accepted shapes: H×W (gray), H×W×1 (gray), H×W×2 (gray + alpha), H×W×3 (RGB),
    H×W×4 (RGBA). Alpha is composited on white.

    Accepted dtypes:
        uint8: as is.  uint16: v * 255 / 65535, rounded.  bool: False→0, True→255.
        float: values within [0, 1] are scaled by 255; any other range is stretched linearly
        from its min..max to 0..255 (a constant image becomes 0); NaN becomes 0.

    Returns a new C-contiguous array (never a view of the input).

    Raises:
        ValueError: naming the bad shape or dtype (other integer dtypes are refused: their range
            is ambiguous, convert them explicitly).
    """
    if not isinstance(array, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(array).__name__}")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ValueError(
            f"image array must be H×W, H×W×1, H×W×2, H×W×3 or H×W×4, got shape {array.shape}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image array is empty: shape {array.shape}")
    scaled = _scale_to_uint8(array)
    channels = scaled.shape[2]
    if channels in (2, 4):
        scaled = _composite_on_white(scaled[:, :, :-1], scaled[:, :, -1])
    if scaled.shape[2] == 1:
        scaled = np.repeat(scaled, 3, axis=2)
    return np.ascontiguousarray(scaled)


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    dtype = array.dtype
    if dtype == np.uint8:
        return array.copy()
    if dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if dtype == np.uint16:
        # Rounded v*255/65535: 0→0, 65535→255, monotone.
        return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if np.issubdtype(dtype, np.floating):
        return _float_to_uint8(array.astype(np.float64))
    raise ValueError(
        f"unsupported image dtype {dtype}: expected uint8, uint16, bool or float "
        "(convert other integer types explicitly)"
    )


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    values = np.where(finite, values, 0.0)
    low, high = (values[finite].min(), values[finite].max()) if finite.any() else (0.0, 0.0)
    if not (low >= 0.0 and high <= 1.0):
        span = high - low
        values = (values - low) / span if span > 0 else np.zeros_like(values)
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def _composite_on_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.uint32)[:, :, None]
    out = (color.astype(np.uint32) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def image_digest(image: np.ndarray) -> str:
    """Content hash of an array (shape, dtype and bytes) for embedding-cache keys.

    Two arrays with the same shape, dtype and pixel bytes get the same 32-hex-digit digest.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(image).__name__}")
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{image.shape}|{image.dtype.str}|".encode())
    h.update(memoryview(np.ascontiguousarray(image)).cast("B"))
    return h.hexdigest()
