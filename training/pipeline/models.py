"""Models for a run, built from base weights kept in memory between runs of one worker process.

Each run used to read and build the base model again (twice: the active adapter and the candidate).
``BaseModels`` keeps one pristine copy of each base (weights, image size) it has built, at most
``MAX_BASES`` of them, and hands out deep copies: a copy of vit_t is tens of milliseconds, a load from
disk and a build most of a second. ``training.model.loading`` builds adapters on such a copy.
"""

from __future__ import annotations

import copy
import threading

import torch
from cachetools import LRUCache

from training.model.weights import BaseWeights, load_base_model

__all__ = ["BaseModels", "MAX_BASES"]

MAX_BASES = 2


class BaseModels:
    """Pristine base models by (checkpoint, image size); thread-safe."""

    def __init__(self, max_bases: int = MAX_BASES) -> None:
        self._bases: LRUCache[tuple, torch.nn.Module] = LRUCache(max_bases)
        self._lock = threading.Lock()
        self.built = 0  # base models built from weights (tests: a second run builds none)

    def sam(self, weights: BaseWeights, image_size: int) -> torch.nn.Module:
        """A fresh copy of the base SAM for ``weights`` at ``image_size`` (eval mode, CPU)."""
        key = (weights.model_type, weights.sha256, str(weights.path), image_size)
        with self._lock:
            pristine = self._bases.get(key)
            if pristine is None:
                pristine = load_base_model(weights, image_size)
                self._bases[key] = pristine
                self.built += 1
        # Outside the lock: copies of a built model need no coordination, and builds must not wait on them.
        return copy.deepcopy(pristine)
