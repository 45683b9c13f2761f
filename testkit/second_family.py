"""A second synthetic scene family for the stand-in, held back from all tuning (issue 23).

The quality experiments tune on the stand-in's *target* family (``testkit.standin``); a change is adopted only
if it also holds here, on scenes that no tuning looked at. So this family shares as little as it can with
both of the stand-in's families:

- shapes: triangles, five-to-seven-pointed stars and crescents (not ellipses, polygons, rings, bars or
  crosses), a class drawn once or twice per scene;
- fills: a smooth shading across the object, concentric rings around a random centre, a lattice of thin
  lines (not flat, stripes, checks, dots or speckle), in muted colours (saturation 110-200, where the other
  families paint at 170-255) near hues neither family uses;
- background: a clutter of muted rectangles with hard edges (not a smooth tinted field, not a noisy
  gradient), so edges alone do not mark objects.

Everything is generated with numpy and OpenCV from a seed: same arguments, same images.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from testkit.standin import Scene, _dataset, _paint, _rotated_grid
from training.data.dataset import SegmentationDataset

__all__ = ["SECOND_CLASSES", "second_dataset"]

SECOND_CLASSES = ["triangle", "star", "crescent"]
# OpenCV hues (0..179): orange, lime and violet sit between the pretrain family's red 0, yellow 28, green 60
# and blue 115 and the target's yellow 42, cyan 90 and magenta 150.
SECOND_HUES = {"triangle": 14, "star": 76, "crescent": 132}

Mask = Callable[[np.random.Generator, tuple[int, int]], np.ndarray]


def _muted_colour(rng: np.random.Generator, hue: int) -> np.ndarray:
    """(3,) float32 RGB near ``hue`` (+-5), muted: saturation 110-200, value 130-230."""
    jittered = (hue + int(rng.integers(-5, 6))) % 180
    hsv = np.array([[[jittered, rng.integers(110, 201), rng.integers(130, 231)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _fill(kind: str, hue: int, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """H x W x 3 float32 texture: ``shaded``, ``concentric`` or ``lattice`` in a colour near ``hue``."""
    colour = _muted_colour(rng, hue)
    u, v = _rotated_grid(rng, size)
    if kind == "shaded":
        # A linear ramp from full colour to 45 % of it across about 80 px, in a random direction.
        weight = 0.45 + 0.55 * np.clip((u % 160) / 80.0, 0, 1)[..., None]
        return colour * weight.astype(np.float32)
    if kind == "concentric":
        h, w = size
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        radius = np.hypot(xx - rng.uniform(0, w), yy - rng.uniform(0, h))
        pattern = ((radius / rng.uniform(5, 8)) % 1.0 < 0.5)[..., None]
        return np.where(pattern, colour, colour * np.float32(0.55))
    if kind == "lattice":
        period = rng.uniform(6, 9)
        lines = ((u % period) < 1.5) | ((v % period) < 1.5)
        return np.where(lines[..., None], colour * np.float32(0.35), colour)
    raise ValueError(f"unknown fill kind {kind!r}")


def _centre(rng: np.random.Generator, size: tuple[int, int], radius: float) -> tuple[float, float]:
    h, w = size
    return rng.uniform(radius, w - radius), rng.uniform(radius, h - radius)


def _polygon(size: tuple[int, int], cx: float, cy: float, radii: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """H x W bool: the polygon through the points at ``radii`` and ``angles`` around (cx, cy)."""
    points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    canvas = np.zeros(size, np.uint8)
    cv2.fillPoly(canvas, [points.astype(np.int32)], 1)
    return canvas.astype(bool)


def _triangle_mask(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A triangle inscribed in a circle of 11-20 % of the short side, no corner sharper than ~35 degrees."""
    radius = rng.uniform(0.11, 0.2) * min(size)
    cx, cy = _centre(rng, size, radius)
    gaps = rng.uniform(0.8, 1.4, 3)
    angles = rng.uniform(0, 2 * np.pi) + np.cumsum(gaps / gaps.sum() * 2 * np.pi)
    return _polygon(size, cx, cy, np.full(3, radius), angles)


def _star_mask(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A star of 5-7 points, outer radius 11-19 % of the short side, inner radius 40-55 % of it."""
    outer = rng.uniform(0.11, 0.19) * min(size)
    points_count = int(rng.integers(5, 8))
    cx, cy = _centre(rng, size, outer)
    angles = rng.uniform(0, 2 * np.pi) + np.arange(2 * points_count) * np.pi / points_count
    radii = np.where(np.arange(2 * points_count) % 2 == 0, outer, outer * rng.uniform(0.4, 0.55))
    return _polygon(size, cx, cy, radii, angles)


def _crescent_mask(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A disk of 10-18 % of the short side less a disk of 75-95 % its radius, shifted 35-60 % of it."""
    radius = rng.uniform(0.1, 0.18) * min(size)
    cx, cy = _centre(rng, size, radius)
    angle, shift = rng.uniform(0, 2 * np.pi), radius * rng.uniform(0.35, 0.6)
    canvas = np.zeros(size, np.uint8)
    cv2.circle(canvas, (int(cx), int(cy)), int(radius), 1, -1)
    bite = (int(cx + shift * np.cos(angle)), int(cy + shift * np.sin(angle)))
    cv2.circle(canvas, bite, int(radius * rng.uniform(0.75, 0.95)), 0, -1)
    return canvas.astype(bool)


# class -> (mask drawer, fill)
SECOND_SHAPES: dict[str, tuple[Mask, str]] = {
    "triangle": (_triangle_mask, "shaded"),
    "star": (_star_mask, "concentric"),
    "crescent": (_crescent_mask, "lattice"),
}


def _clutter(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """H x W x 3 float32 background: 10-20 muted, rotated rectangles with hard edges over a grey base."""
    h, w = size
    image = np.full((h, w, 3), rng.uniform(60, 190), np.float32)
    for _ in range(int(rng.integers(10, 21))):
        grey = rng.uniform(50, 200)
        colour = np.clip(grey + rng.uniform(-20, 20, 3), 0, 255)
        box = ((rng.uniform(0, w), rng.uniform(0, h)), (rng.uniform(0.1, 0.5) * w, rng.uniform(0.1, 0.5) * h),
               rng.uniform(0, 180))
        cv2.fillPoly(image, [cv2.boxPoints(box).astype(np.int32)], colour.tolist())
    return image


def _second_scene(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    image = _clutter(rng, size)
    masks = np.zeros((len(SECOND_CLASSES), *size), bool)
    for cls in rng.permutation(len(SECOND_CLASSES)):
        if rng.random() < 0.15:  # sometimes a class is absent: it must then predict nothing
            continue
        name = SECOND_CLASSES[cls]
        shape, texture = SECOND_SHAPES[name]
        # Unlike the other families a class may appear twice: one mask, two objects.
        for _ in range(1 + int(rng.random() < 0.3)):
            _paint(image, masks, int(cls), shape(rng, size), _fill(texture, SECOND_HUES[name], rng, size))
    return image, masks


def second_dataset(count: int, size: int = 256, seed: int = 0) -> SegmentationDataset:
    """``count`` size x size second-family scenes (classes ``SECOND_CLASSES``)."""
    return _dataset(_second_scene, SECOND_CLASSES, count, size, seed, "second")
