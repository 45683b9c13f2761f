"""Synthetic task images with four object classes, their masks, and the clicks an annotator makes.

Images are photo-sized JPEGs (default 1280 x 960) with a textured background, so decode and
resize costs are realistic; each seed gives a different picture (a different cache key).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

CLASSES = ["a", "b", "c", "d"]

LABEL_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="a" background="#ff0000"/>
    <Label value="b" background="#00ff00"/>
    <Label value="c" background="#0000ff"/>
    <Label value="d" background="#ffff00"/>
  </BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="a" smart="true"/>
    <Label value="b" smart="true"/>
    <Label value="c" smart="true"/>
    <Label value="d" smart="true"/>
  </KeyPointLabels>
</View>"""


@dataclass
class Scene:
    image: np.ndarray  # H x W x 3 uint8 RGB
    masks: dict[str, np.ndarray]  # class -> H x W bool
    jpeg: bytes

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]


def make_scene(seed: int, height: int = 960, width: int = 1280) -> Scene:
    """One picture with a disc (a), a box (b), an ellipse (c) and a triangle (d)."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    ground = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    image = cv2.addWeighted(ground, 0.5, np.full_like(ground, 110), 0.5, 0)
    image = image + rng.integers(0, 20, image.shape, dtype=np.uint8)
    masks = {}
    unit = min(height, width)
    layer = np.zeros((height, width), np.uint8)
    cx, cy = int(rng.integers(unit // 6, width // 2)), int(rng.integers(unit // 6, height // 2))
    cv2.circle(layer, (cx, cy), int(rng.integers(unit // 14, unit // 7)), 1, -1)
    masks["a"] = layer.astype(bool)
    layer = np.zeros_like(layer)
    x0, y0 = int(rng.integers(width // 2, width - unit // 4)), int(rng.integers(0, height // 2))
    cv2.rectangle(layer, (x0, y0), (x0 + int(rng.integers(unit // 10, unit // 5)),
                                    y0 + int(rng.integers(unit // 10, unit // 5))), 1, -1)
    masks["b"] = layer.astype(bool)
    layer = np.zeros_like(layer)
    center = (int(rng.integers(unit // 5, width // 2)), int(rng.integers(height // 2 + unit // 10, height - unit // 8)))
    cv2.ellipse(layer, center, (int(rng.integers(unit // 12, unit // 6)), int(rng.integers(unit // 20, unit // 10))),
                float(rng.integers(0, 180)), 0, 360, 1, -1)
    masks["c"] = layer.astype(bool)
    layer = np.zeros_like(layer)
    bx, by = int(rng.integers(width // 2, width - unit // 4)), int(rng.integers(height // 2, height - unit // 5))
    side = int(rng.integers(unit // 10, unit // 5))
    cv2.fillPoly(layer, [np.array([[bx, by + side], [bx + side, by + side], [bx + side // 2, by]], np.int32)], 1)
    masks["d"] = layer.astype(bool)
    colours = {"a": (220, 50, 40), "b": (40, 60, 200), "c": (40, 180, 60), "d": (230, 210, 40)}
    taken = np.zeros((height, width), bool)
    for name in CLASSES:
        masks[name] &= ~taken  # later shapes never hide earlier ones: masks stay disjoint
        taken |= masks[name]
        image[masks[name]] = colours[name]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=90)
    return Scene(image, masks, buffer.getvalue())


def _inside(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    k = int(rng.integers(0, len(xs)))
    return float(xs[k]), float(ys[k])


def _outside(mask: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """A point near the object but not on it (a typical negative click)."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    for _ in range(100):
        x = float(np.clip(rng.normal(xs.mean(), xs.std() * 2 + 5), 0, w - 1))
        y = float(np.clip(rng.normal(ys.mean(), ys.std() * 2 + 5), 0, h - 1))
        if not mask[int(y), int(x)]:
            return x, y
    return 0.0, 0.0


def click_sequence(scene: Scene, label: str, clicks: int, seed: int) -> list[list[tuple[float, float, bool]]]:
    """Growing point sets in percent: click k has k points (x%, y%, positive), the way the smart tool sends them.

    The first click is positive on the object; later ones alternate corrections (negative
    outside, positive inside).
    """
    rng = np.random.default_rng(seed)
    mask = scene.masks[label]
    h, w = mask.shape
    points: list[tuple[float, float, bool]] = []
    out = []
    for k in range(clicks):
        positive = k == 0 or k % 2 == 0
        x, y = _inside(mask, rng) if positive else _outside(mask, rng)
        points.append((x * 100.0 / w, y * 100.0 / h, positive))
        out.append(list(points))
    return out
