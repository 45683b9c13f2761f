"""Training on windows of the embedding grid: a step decodes part of an image's features, with the targets,
valid region and positional encoding of the same area, so what is learned holds on the whole grid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from training.model.features import ImageFeatures

if TYPE_CHECKING:
    from training.learn.trainer import PreparedSample


@dataclass
class _Window:
    """The part of an image a step trains on: its features, targets and valid mask, and the
    top-left token (None: the whole image)."""

    features: ImageFeatures
    targets: torch.Tensor
    valid: torch.Tensor
    origin: tuple[int, int] | None

    @property
    def embedding(self) -> torch.Tensor:
        return self.features.embedding


def _window(embedding: ImageFeatures | torch.Tensor, sample: PreparedSample, tokens: int,
            rng: np.random.Generator) -> _Window:
    """A ``tokens`` x ``tokens`` window of the embedding grid, centred on a random pixel of the image
    (not its padding); the whole image when the grid is no larger. The decoder's cost grows with
    the number of tokens, so windows make each step cheaper; the positional encoding follows the
    window, so what is learned holds on the whole grid."""
    features = ImageFeatures.of(embedding)
    grid = features.embedding.shape[-1]
    if not tokens or grid <= tokens:
        return _Window(features, sample.targets, sample.valid, None)
    scale = sample.targets.shape[-1] // grid  # low-resolution pixels per token
    # The valid region is the image's top-left rectangle (the rest is padding).
    height, width = int(sample.valid[:, 0].sum()), int(sample.valid[0].sum())
    centre = (rng.integers(max(1, height)) // scale, rng.integers(max(1, width)) // scale)
    row, col = (int(np.clip(c - tokens // 2, 0, grid - tokens)) for c in centre)
    rows, cols = slice(row * scale, (row + tokens) * scale), slice(col * scale, (col + tokens) * scale)
    return _Window(features.window(row, col, tokens), sample.targets[:, rows, cols], sample.valid[rows, cols],
                   (row, col))
