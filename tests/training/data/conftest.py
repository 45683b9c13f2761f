"""Helpers shared by the data tests."""

from __future__ import annotations

import numpy as np


def synthetic_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
