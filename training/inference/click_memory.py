"""The previous mask of a click sequence, for families that feed it back (SAM 2).

Label Studio sends every click of a region with each request, and the simulated clicker grows its click
list the same way: a request's clicks minus its last one name the previous request of the sequence. Its
low-resolution logits, remembered here, go back to the decoder as the mask prompt, as SAM 2's
interactive predictor expects. Entries are bound to the image's embedding tensor (a weak reference), so
a recycled object id never hands one image's mask to another.
"""

from __future__ import annotations

import hashlib
import threading
import weakref

import numpy as np
import torch
from cachetools import LRUCache

MAX_SEQUENCES = 64  # a 1024 px mask prompt is 256 KB


def _key(points: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None, extra: tuple) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in (points, labels, box):
        digest.update(b"|" if part is None else np.ascontiguousarray(part, dtype=np.float32).tobytes() + b";")
    digest.update(repr(extra).encode())
    return digest.hexdigest()


class ClickMemory:
    """Low-resolution logits of recent prompts, by (image embedding, prompts)."""

    def __init__(self, entries: int = MAX_SEQUENCES) -> None:
        self._entries: LRUCache = LRUCache(entries)
        self._lock = threading.Lock()

    def previous(self, embedding: torch.Tensor, points: np.ndarray | None, labels: np.ndarray | None,
                 box: np.ndarray | None, extra: tuple = ()) -> torch.Tensor | None:
        """The logits of the same prompts without the last point, if that request was answered here."""
        if points is None or len(points) == 0:
            return None
        fewer = points[:-1] if len(points) > 1 else None
        fewer_labels = labels[:-1] if labels is not None and fewer is not None else None
        if fewer is None and box is None:
            return None  # a first click has no previous mask
        return self._get(embedding, _key(fewer, fewer_labels, box, extra))

    def remember(self, embedding: torch.Tensor, points: np.ndarray | None, labels: np.ndarray | None,
                 box: np.ndarray | None, low_res: torch.Tensor, extra: tuple = ()) -> None:
        with self._lock:
            self._entries[(id(embedding), _key(points, labels, box, extra))] = (weakref.ref(embedding), low_res)

    def _get(self, embedding: torch.Tensor, key: str) -> torch.Tensor | None:
        with self._lock:
            found = self._entries.get((id(embedding), key))
        if found is None or found[0]() is not embedding:
            return None
        return found[1]
