"""Masks -> Label Studio result regions: brush RLE or simplified polygons in percent of the image.

Masks are H x W bool arrays at the image's display resolution (EXIF orientation applied), which
is the frame Label Studio's percent coordinates and brush RLE refer to.
"""

from __future__ import annotations

import uuid

import cv2
import numpy as np
from label_studio_sdk.converter.brush import mask2rle

from backend.label_config import BRUSH, POLYGON, LabelSetup

# Regions smaller than this many pixels are speckle, not objects worth an annotator's attention.
MIN_REGION_PIXELS = 16
# Polygon simplification: max distance of the simplified outline from the mask edge, in pixels
# (relative to the outline length, floored so tiny shapes keep their corners).
POLYGON_EPSILON_FRACTION = 0.002
POLYGON_EPSILON_MIN_PX = 0.75


def new_region_id() -> str:
    return uuid.uuid4().hex[:10]


def encode_brush(mask: np.ndarray) -> list[int]:
    """H x W bool -> Label Studio brush RLE (the mask is the alpha channel, 255 inside)."""
    return mask2rle(np.where(mask, np.uint8(255), np.uint8(0)))


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
    if int(mask.sum()) < MIN_REGION_PIXELS:
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
