"""Polygon fill by pixel centres: the one rasterisation of COCO polygons and Label Studio regions.

Coordinates are continuous pixel-edge units: pixel (row i, column j) covers [j, j+1) x [i, i+1),
so its centre is (j + 0.5, i + 0.5). A pixel is inside when its centre is (even-odd rule), which
keeps a filled square exactly its size; cv2.fillPoly also paints the outline's pixels and grows
every shape by about a pixel.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fill_polygon"]


def fill_polygon(points: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rasterise one closed polygon into an H x W bool mask.

    Args:
        points: N x 2 float (x, y) vertices in pixel-edge units, finite; the last vertex joins the
            first. Parts outside the image are clipped.
        height, width: the mask size in pixels.
    """
    xs, ys = points[:, 0], points[:, 1]
    mask = np.zeros((height, width), dtype=bool)
    x_next, y_next = np.roll(xs, -1), np.roll(ys, -1)
    centres = np.arange(height, dtype=np.float64)[:, None] + 0.5
    # Half-open in y so that a row through a vertex counts its two edges once (and horizontal edges never).
    crosses = (ys[None, :] <= centres) != (y_next[None, :] <= centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (centres - ys[None, :]) / (y_next - ys)[None, :]
    x_at = xs[None, :] + t * (x_next - xs)[None, :]
    for row in np.flatnonzero(crosses.any(axis=1)):
        xs_row = np.sort(x_at[row, crosses[row]])
        for left, right in zip(xs_row[0::2], xs_row[1::2], strict=True):
            # Columns whose centre c + 0.5 lies in [left, right).
            first = max(int(np.ceil(left - 0.5)), 0)
            stop = min(int(np.ceil(right - 0.5)), width)
            if stop > first:
                mask[row, first:stop] = True
    return mask
