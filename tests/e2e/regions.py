"""Checks for the regions samloop hands to Label Studio, as Label Studio stores and shows them.

Each check raises ``AssertionError`` naming what is wrong, and returns the decoded geometry so a test can
go on (a brush mask of shape ``(H, W)``, polygon points in percent).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import httpx
import numpy as np
from label_studio_sdk.converter.brush import decode_rle

from tests.e2e import ls_api as api

Json = dict[str, Any]


def latest_predictions(client: httpx.Client, project_id: int) -> dict[int, Json]:
    """The newest stored prediction of every task of the project that has one, by task id."""
    latest: dict[int, Json] = {}
    for prediction in sorted(api.list_predictions(client, project_id), key=lambda p: p["id"]):
        latest[prediction["task"]] = prediction
    return latest


def predictions_of(client: httpx.Client, project_id: int, task_ids: Iterable[int]) -> dict[int, Json]:
    """The newest prediction of each of ``task_ids``; a task without one fails the check."""
    latest = latest_predictions(client, project_id)
    wanted = list(task_ids)
    missing = [t for t in wanted if t not in latest]
    assert not missing, f"no prediction stored for tasks {missing} (predictions exist for {sorted(latest)})"
    return {t: latest[t] for t in wanted}


def _check_common(region: Json, kind: str, width: int, height: int, from_name: str, to_name: str) -> None:
    assert region.get("type") == kind, f"region type {region.get('type')!r}, expected {kind!r}: {region}"
    assert region.get("from_name") == from_name, f"from_name {region.get('from_name')!r}, expected {from_name!r}"
    assert region.get("to_name") == to_name, f"to_name {region.get('to_name')!r}, expected {to_name!r}"
    size = (region.get("original_width"), region.get("original_height"))
    assert size == (width, height), f"region says the image is {size[0]}x{size[1]}, it is {width}x{height}"
    score = region.get("score")
    assert score is None or (isinstance(score, int | float) and 0.0 <= score <= 1.0), f"region score {score!r}"


def check_brush_region(
    region: Json, *, width: int, height: int, labels: Sequence[str], from_name: str = "tag", to_name: str = "image"
) -> np.ndarray:
    """A BrushLabels region with valid Label Studio RLE of the image's size; returns its mask ``(H, W)`` bool."""
    _check_common(region, "brushlabels", width, height, from_name, to_name)
    value = region["value"]
    assert value.get("format") == "rle", f"brush format {value.get('format')!r}, expected 'rle'"
    chosen = value.get("brushlabels")
    assert isinstance(chosen, list) and len(chosen) == 1 and chosen[0] in labels, (
        f"brush labels {chosen!r} are not one label of the config's {list(labels)}"
    )
    rle = value.get("rle")
    assert isinstance(rle, list) and rle, "empty or missing RLE"
    assert all(isinstance(v, int) and 0 <= v <= 255 for v in rle), "RLE must be a list of bytes (0..255)"
    flat = decode_rle(rle)
    assert flat.size == width * height * 4, (
        f"RLE decodes to {flat.size} values, expected H*W*4 = {height}*{width}*4 = {height * width * 4}"
    )
    return flat.reshape(height, width, 4)[..., 3] > 0


def check_polygon_region(
    region: Json, *, width: int, height: int, labels: Sequence[str], from_name: str = "poly", to_name: str = "image"
) -> list[list[float]]:
    """A PolygonLabels region: at least 3 points, all within 0..100 percent; returns the points."""
    _check_common(region, "polygonlabels", width, height, from_name, to_name)
    value = region["value"]
    chosen = value.get("polygonlabels")
    assert isinstance(chosen, list) and len(chosen) == 1 and chosen[0] in labels, (
        f"polygon labels {chosen!r} are not one label of the config's {list(labels)}"
    )
    points = value.get("points")
    assert isinstance(points, list) and len(points) >= 3, f"a polygon needs >= 3 points, got {points!r}"
    for point in points:
        assert len(point) == 2 and all(0.0 <= float(c) <= 100.0 for c in point), f"point {point} outside 0..100 %"
    return points


def mask_to_polygon_pct(mask: np.ndarray, max_points: int = 40) -> list[tuple[float, float]]:
    """The outline of the largest blob of ``mask`` ``(H, W)`` as ``(x, y)`` percent points (for annotations)."""
    import cv2

    height, width = mask.shape
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        raise ValueError("the mask is empty: no polygon")
    contour = max(contours, key=cv2.contourArea)
    epsilon = 0.5
    while True:
        approx = cv2.approxPolyDP(contour, epsilon, True).reshape(-1, 2)
        if len(approx) <= max_points:
            break
        epsilon *= 1.5
    return [(100.0 * float(x) / width, 100.0 * float(y) / height) for x, y in approx]
