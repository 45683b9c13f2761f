"""A labeled task's regions as per-class masks, and which of its annotations to train on.

Per task the latest non-cancelled annotation is used; annotations marked ground truth win.

Coordinates: brush RLE is a full-resolution alpha plane of ``original_height x original_width``;
polygon points and rectangles are percent of the image width/height, rectangles rotating
clockwise (degrees) about their top-left corner. Masks come out at the resolution of the image
as displayed (EXIF orientation applied, which is what Label Studio draws on).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime

import cv2
import numpy as np
from label_studio_sdk.converter.brush import decode_rle

from training.data.polygons import fill_polygon
from training.labelstudio.label_config import BRUSH, POLYGON, LabelSetup

__all__ = ["TaskSkipped", "annotation_masks", "pick_annotation"]


class TaskSkipped(Exception):
    """This task cannot be used; the message is the reason reported to the user."""


# ----- annotation choice -----------------------------------------------------------------------


def _timestamp(annotation: dict) -> float:
    for key in ("updated_at", "created_at"):
        value = annotation.get(key)
        if isinstance(value, str) and value:
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return float("-inf")


def pick_annotation(task: dict) -> dict | None:
    """The annotation to train on: latest non-cancelled, preferring ones marked ground truth."""
    usable = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    ground_truth = [a for a in usable if a.get("ground_truth")]
    pool = ground_truth or usable
    if not pool:
        return None
    return max(pool, key=lambda a: (_timestamp(a), a.get("id") or 0))


# ----- regions -> masks ------------------------------------------------------------------------


def _percent_points(points: Iterable[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Percent (x, y) -> pixel coordinates where pixel (i, j) spans [j, j+1) x [i, i+1)."""
    array = np.asarray(list(points), dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2 or not np.isfinite(array).all():
        raise TaskSkipped(f"polygon points are not a list of finite [x, y] pairs: {str(points)[:80]}")
    return np.stack([array[:, 0] * width / 100.0, array[:, 1] * height / 100.0], axis=1)


def _polygon_mask(value: dict, height: int, width: int) -> np.ndarray | None:
    points = value.get("points")
    if not isinstance(points, list):
        raise TaskSkipped(f"polygon has no points list: {str(value)[:80]}")
    if len(points) < 3:
        return None  # an unfinished polygon covers nothing
    return fill_polygon(_percent_points(points, height, width), height, width)


def _rectangle_mask(value: dict, height: int, width: int) -> np.ndarray:
    try:
        x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
        rotation = math.radians(float(value.get("rotation") or 0.0))
    except (KeyError, TypeError, ValueError) as exc:
        raise TaskSkipped(f"rectangle has a missing or non-numeric field ({exc}): {str(value)[:80]}") from exc
    if not all(math.isfinite(v) for v in (x, y, w, h, rotation)):
        raise TaskSkipped(f"rectangle has non-finite coordinates: {str(value)[:80]}")
    origin = np.array([x * width / 100.0, y * height / 100.0])
    # Label Studio rotates clockwise on screen (y down) about the top-left corner.
    cos, sin = math.cos(rotation), math.sin(rotation)
    along_w = np.array([cos, sin]) * (w * width / 100.0)
    along_h = np.array([-sin, cos]) * (h * height / 100.0)
    corners = np.stack([origin, origin + along_w, origin + along_w + along_h, origin + along_h])
    return fill_polygon(corners, height, width)


def _rle_length(rle: list[int]) -> int:
    """The value count in an RLE header (first 32 bits), read before decoding a possibly bad stream."""
    header = bytes(rle[:4])
    return int.from_bytes(header, "big") if len(header) == 4 else -1


def _brush_mask(region: dict, height: int, width: int) -> np.ndarray:
    value = region.get("value") or {}
    rle = value.get("rle")
    if value.get("format", "rle") != "rle" or not isinstance(rle, list) or not rle:
        raise TaskSkipped(f"brush region {region.get('id')!r} has no RLE data")
    if not all(isinstance(v, int) and 0 <= v <= 255 for v in rle):
        raise TaskSkipped(f"brush region {region.get('id')!r} RLE is not a list of bytes")
    try:
        rle_h, rle_w = int(region["original_height"]), int(region["original_width"])
    except (KeyError, TypeError, ValueError):
        rle_h, rle_w = height, width
    expected = rle_h * rle_w * 4
    # A corrupt header could ask for gigabytes; check it against the image size first.
    if _rle_length(rle) != expected:
        raise TaskSkipped(
            f"brush region {region.get('id')!r} RLE holds {_rle_length(rle)} values, "
            f"expected {expected} for {rle_w}x{rle_h} (W x H)"
        )
    try:
        flat = decode_rle(rle)
    except (ValueError, IndexError) as exc:
        raise TaskSkipped(f"brush region {region.get('id')!r} RLE cannot be decoded: {exc}") from exc
    if flat.size != expected:
        raise TaskSkipped(f"brush region {region.get('id')!r} decoded to {flat.size} values, expected {expected}")
    alpha = flat.reshape(rle_h, rle_w, 4)[:, :, 3] > 127
    if (rle_h, rle_w) == (height, width):
        return alpha
    if abs(rle_w / rle_h - width / height) > 0.02 * (width / height):
        raise TaskSkipped(f"brush mask is {rle_w}x{rle_h} (W x H) but the image is {width}x{height}")
    # Same shape, other resolution (the image was replaced by a resized copy): rescale the mask.
    return cv2.resize(alpha.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)


def annotation_masks(result: list, setup: LabelSetup, height: int, width: int) -> dict[str, np.ndarray]:
    """Per-class H x W bool masks from an annotation's ``result`` list.

    Regions of controls that are no mask source, regions of other images, and labels that are not
    among the classes (the output control's labels) are ignored.

    Raises:
        TaskSkipped: a region of a mask control cannot be decoded.
    """
    if not isinstance(result, list):
        raise TaskSkipped(f"annotation result is {type(result).__name__}, not a list")
    kinds = {control.name: control.kind for control in setup.mask_sources}
    known = set(setup.labels)
    masks: dict[str, np.ndarray] = {}
    for region in result:
        if not isinstance(region, dict):
            raise TaskSkipped(f"annotation region is {type(region).__name__}, not an object")
        result_type = kinds.get(region.get("from_name", ""))
        if result_type is None or region.get("to_name", setup.image_name) != setup.image_name:
            continue
        value = region.get("value")
        if not isinstance(value, dict):
            raise TaskSkipped(f"region {region.get('id')!r} has no value object")
        labels = [label for label in value.get(result_type) or [] if label in known]
        if not labels:
            continue
        if result_type == BRUSH:
            mask = _brush_mask(region, height, width)
        elif result_type == POLYGON:
            mask = _polygon_mask(value, height, width)
        else:
            mask = _rectangle_mask(value, height, width)
        if mask is None:
            continue
        for label in labels:
            masks[label] = masks[label] | mask if label in masks else mask
    return masks
