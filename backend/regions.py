"""Masks -> Label Studio result regions: brush RLE or simplified polygons in percent of the image.

Masks are H x W bool arrays at the image's display resolution (EXIF orientation applied), which
is the frame Label Studio's percent coordinates and brush RLE refer to.
"""

from __future__ import annotations

import uuid

import cv2
import numpy as np

from training.labelstudio.label_config import BRUSH, POLYGON, LabelSetup

# Regions smaller than this many pixels are speckle, not objects worth an annotator's attention.
MIN_REGION_PIXELS = 16
# Polygon simplification: max distance of the simplified outline from the mask edge, in pixels
# (relative to the outline length, floored so tiny shapes keep their corners).
POLYGON_EPSILON_FRACTION = 0.002
POLYGON_EPSILON_MIN_PX = 0.75


def new_region_id() -> str:
    return uuid.uuid4().hex[:10]


# Label Studio's brush RLE (thi-ng rle-pack): a header (value count: 32 bits, word size - 1: 5 bits,
# the four run-length field widths - 1: 4 bits each), then one token per run of equal values:
# [1 bit: repeated?][2 bits: which field width][field: run length - 1][8 bits: value].
_CHANNELS = 4  # the mask is repeated as R, G, B, A bytes, so every run is a multiple of 4 bytes long
_FIELD_BITS = np.array([3, 4, 8, 16], dtype=np.int64)
_FIELD_LIMITS = np.array([8, 16, 256])  # longest run (bytes) each field width holds
_LONGEST_RUN_PX = (1 << 16) // _CHANNELS  # the SDK cuts longer runs into pieces of 2**16 bytes
_HEADER_BITS = 32 + 5 + 4 * 4
_HEADER_TAIL = (8 - 1) << 16 | (3 - 1) << 12 | (4 - 1) << 8 | (8 - 1) << 4 | (16 - 1)  # word size 8; 3, 4, 8, 16
_INSIDE = np.uint64(255)


def _run_tokens(pieces_of_long_runs: bool) -> tuple[np.ndarray, np.ndarray]:
    """Token (value byte 0) and its width in bits for a run of 0..2**14 pixels.

    The SDK writes every piece of a run longer than 2**16 bytes with the 16-bit field, even a last piece
    short enough for a narrower one: ``pieces_of_long_runs`` gives those tokens.
    """
    run_bytes = np.arange(_LONGEST_RUN_PX + 1, dtype=np.int64) * _CHANNELS
    field = np.full(run_bytes.size, 3) if pieces_of_long_runs else np.searchsorted(_FIELD_LIMITS, run_bytes)
    widths = 3 + _FIELD_BITS[field] + 8
    # A run is never one byte, so the "repeated" bit is always set.
    tokens = (1 << (widths - 1)) | (field << (widths - 3)) | ((run_bytes - 1) << 8)
    tokens[0] = widths[0] = 0  # no run is empty; an empty mask's one "run" then writes nothing
    return tokens.astype(np.uint64), widths.astype(np.uint64)


# Looked up by run length: per run, two gathers instead of a search and the arithmetic above.
_TOKENS, _TOKEN_WIDTHS = _run_tokens(False)
_LONG_RUN_TOKENS, _LONG_RUN_WIDTHS = _run_tokens(True)


def encode_brush(mask: np.ndarray) -> list[int]:
    """H x W bool -> Label Studio brush RLE (every RGBA byte 255 inside the mask, 0 outside).

    Byte-identical to ``label_studio_sdk.converter.brush.mask2rle`` on the same mask (including its
    quirks: runs longer than 2**16 bytes are cut into 2**16-byte pieces all written with the 16-bit field,
    and a stream that ends on a byte boundary gets one extra zero byte). Its cost follows the number of
    runs (the mask's boundary), not its area: a compact 1024 x 1024 mask takes well under a millisecond.
    """
    flat = np.ascontiguousarray(mask, dtype=bool).reshape(-1)
    last_of_run = np.flatnonzero(flat[1:] != flat[:-1])
    lengths = np.diff(last_of_run, prepend=-1, append=flat.size - 1)  # pixels per run
    first_inside = bool(flat.size) and bool(flat[0])
    if int(lengths.max()) <= _LONGEST_RUN_PX:
        tokens, widths = _TOKENS[lengths], _TOKEN_WIDTHS[lengths]
        tokens[0 if first_inside else 1 :: 2] |= _INSIDE  # runs alternate between outside and inside
    else:
        tokens, widths = _split_run_tokens(lengths, first_inside)
    header = (flat.size * _CHANNELS) << (_HEADER_BITS - 32) | _HEADER_TAIL
    return _pack_tokens(tokens, widths, header)


def _split_run_tokens(lengths: np.ndarray, first_inside: bool) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and widths when some run is longer than 2**16 bytes: one token per piece."""
    pieces = (lengths - 1) // _LONGEST_RUN_PX + 1
    owner = np.repeat(np.arange(lengths.size), pieces)
    piece = np.full(owner.size, _LONGEST_RUN_PX, dtype=np.int64)
    piece[np.cumsum(pieces) - 1] = lengths - (pieces - 1) * _LONGEST_RUN_PX
    split = (pieces > 1)[owner]
    tokens = np.where(split, _LONG_RUN_TOKENS[piece], _TOKENS[piece])
    widths = np.where(split, _LONG_RUN_WIDTHS[piece], _TOKEN_WIDTHS[piece])
    tokens[(owner & 1) == (0 if first_inside else 1)] |= _INSIDE
    return tokens, widths


def _pack_tokens(tokens: np.ndarray, widths: np.ndarray, header: int) -> list[int]:
    """The 53-bit ``header``, then ``tokens[i]`` as ``widths[i]``-bit big-endian fields, as bytes.

    Consumes ``tokens`` (shifted in place). A token (<= 27 bits) lies within the two 32-bit words from
    the one its first bit falls in. Tokens own disjoint bits, so summing per word what each puts there
    is OR-ing them, and every word sum is < 2**32, exact in bincount's float64.
    """
    starts = np.cumsum(widths)
    total = _HEADER_BITS + int(starts[-1])
    starts -= widths
    starts += np.uint64(_HEADER_BITS)
    shift = starts & np.uint64(31)
    shift += widths
    np.subtract(np.uint64(64), shift, out=shift)
    tokens <<= shift  # aligned in a 64-bit window over the token's first word and the next one
    word = (starts >> np.uint64(5)).view(np.int64)
    count = total // 32 + 2
    words = np.bincount(word, weights=tokens >> np.uint64(32), minlength=count)
    tokens &= np.uint64(0xFFFFFFFF)
    word += 1
    words += np.bincount(word, weights=tokens, minlength=count)
    window = header << (64 - _HEADER_BITS)
    words[0] += window >> 32
    words[1] += window & 0xFFFFFFFF
    # The SDK pads with 1..8 zero bits, never none: always one byte more than total // 8.
    return words.astype(">u4").view(np.uint8)[: total // 8 + 1].tolist()


def mask_polygons(mask: np.ndarray) -> list[list[list[float]]]:
    """Outer contours of a mask as polygons of [x%, y%] points (holes are not representable)."""
    height, width = mask.shape
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        if cv2.contourArea(contour) + len(contour) < MIN_REGION_PIXELS:
            continue
        epsilon = max(POLYGON_EPSILON_MIN_PX, POLYGON_EPSILON_FRACTION * cv2.arcLength(contour, True))
        simplified = cv2.approxPolyDP(contour, epsilon, True).reshape(-1, 2)
        if len(simplified) < 3:
            continue
        # Contour points are pixel indices; +0.5 puts them at pixel centres in LS's continuous frame.
        points = [[(float(x) + 0.5) * 100.0 / width, (float(y) + 0.5) * 100.0 / height] for x, y in simplified]
        polygons.append([[round(x, 4), round(y, 4)] for x, y in points])
    return polygons


def instances(mask: np.ndarray) -> list[np.ndarray]:
    """Connected components (8-connected) of a mask, largest first, speckle dropped."""
    count, components, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    order = sorted(range(1, count), key=lambda k: -int(stats[k, cv2.CC_STAT_AREA]))
    return [components == k for k in order if stats[k, cv2.CC_STAT_AREA] >= MIN_REGION_PIXELS]


def mask_regions(mask: np.ndarray, label: str, score: float, setup: LabelSetup, split: bool = False) -> list[dict]:
    """Result regions for one class mask in the config's output control.

    Brush: one region for the mask, or one per connected instance when ``split``.
    Polygon: one region per outer contour (a polygon cannot hold several parts).
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be H x W, got shape {mask.shape}")
    mask = mask.astype(bool, copy=False)
    if np.count_nonzero(mask) < MIN_REGION_PIXELS:
        return []
    height, width = mask.shape
    control = setup.output
    common = {
        "from_name": control.name,
        "to_name": setup.image_name,
        "type": control.kind,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "score": float(score),
    }
    regions = []
    if control.kind == BRUSH:
        parts = instances(mask) if split else [mask]
        for part in parts:
            value = {"format": "rle", "rle": encode_brush(part), BRUSH: [label]}
            regions.append({"id": new_region_id(), **common, "value": value})
    elif control.kind == POLYGON:
        for points in mask_polygons(mask):
            value = {"points": points, "closed": True, POLYGON: [label]}
            regions.append({"id": new_region_id(), **common, "value": value})
    else:
        raise ValueError(f"cannot emit masks into a {control.kind!r} control")
    return regions


def task_score(region_scores: list[float]) -> float:
    """One number per task for Label Studio's sorting: the mean region confidence (0 without regions).

    Sorting tasks by it ascending puts the least confident predictions first (active learning).
    """
    return float(np.mean(region_scores)) if region_scores else 0.0
