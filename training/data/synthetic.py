"""Synthetic three-class images for tests, demos and benchmarks (no real data or weights here).

Each image has a noisy background and up to one disc, one square and one triangle, each with its
own colour and texture, at random positions and sizes; shapes may overlap (later ones on top).
"""

from __future__ import annotations

import cv2
import numpy as np

from training.data.dataset import Sample, SegmentationDataset

SYNTHETIC_CLASSES = ["disc", "square", "triangle"]


def _texture(rng: np.random.Generator, kind: int, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    if kind == 0:  # warm colour with fine noise
        base = np.array([220, 60, 50], np.float32)
        pattern = rng.normal(0, 12, (h, w, 1))
    elif kind == 1:  # green stripes
        base = np.array([50, 190, 70], np.float32)
        pattern = (((xx // 4) % 2) * 50 - 25)[..., None]
    else:  # blue checkerboard
        base = np.array([60, 80, 220], np.float32)
        pattern = ((((xx // 5) + (yy // 5)) % 2) * 60 - 30)[..., None]
    return base + pattern


def synthetic_sample(rng: np.random.Generator, size: tuple[int, int], name: str) -> Sample:
    """One H x W image with its 3 x H x W class masks."""
    h, w = size
    image = rng.normal(128, 30, (h, w, 3)).clip(0, 255)
    image += rng.uniform(-40, 40, 3)  # the background's tint varies per image
    masks = np.zeros((3, h, w), bool)
    short = min(h, w)
    for cls in rng.permutation(3):
        if rng.random() < 0.15:  # sometimes a class is absent: absent classes must predict empty
            continue
        radius = int(rng.uniform(0.12, 0.22) * short)
        cx, cy = int(rng.uniform(radius, w - radius)), int(rng.uniform(radius, h - radius))
        canvas = np.zeros((h, w), np.uint8)
        if cls == 0:
            cv2.circle(canvas, (cx, cy), radius, 1, -1)
        elif cls == 1:
            cv2.rectangle(canvas, (cx - radius, cy - radius), (cx + radius, cy + radius), 1, -1)
        else:
            pts = np.array([[cx, cy - radius], [cx - radius, cy + radius], [cx + radius, cy + radius]], np.int32)
            cv2.fillPoly(canvas, [pts], 1)
        region = canvas.astype(bool)
        image[region] = _texture(rng, int(cls), (h, w))[region]
        masks[:, region] = False
        masks[cls] = region
    return Sample(image=image.clip(0, 255).astype(np.uint8), masks=masks, name=name)


def synthetic_dataset(count: int, size: int | tuple[int, int] = 256, seed: int = 0,
                      prefix: str = "synth") -> SegmentationDataset:
    """``count`` synthetic samples; ``size`` is one side or (H, W). Same seed, same images."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if isinstance(size, int) else tuple(size)
    samples = [synthetic_sample(rng, shape, f"{prefix}_{seed}_{i:03d}") for i in range(count)]
    return SegmentationDataset(list(SYNTHETIC_CLASSES), samples)
