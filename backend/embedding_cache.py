"""LRU cache of image embeddings bounded in bytes.

Keys are (image content digest, encoder identity): the same picture under another URL hits, and
an adapter that changes the encoder gets its own entries.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

from cachetools import LRUCache

from training.inference.predictor import ImageEmbedding


class EmbeddingCache:
    """Thread-safe LRU of ``ImageEmbedding`` objects, at most ``max_bytes`` of tensors in total
    (cachetools' LRUCache sized by each entry's bytes, under one lock)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._items: LRUCache[Hashable, ImageEmbedding] = LRUCache(max(1, max_bytes), getsizeof=_size)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> ImageEmbedding | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
            else:
                self.hits += 1
            return item

    def put(self, key: Hashable, embedding: ImageEmbedding) -> None:
        if embedding.nbytes > self.max_bytes:
            return  # a cache of 0 MB (or an entry larger than the cache) stores nothing
        with self._lock:
            self._items[key] = embedding

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return int(self._items.currsize)

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._items), "bytes": self.nbytes, "max_bytes": self.max_bytes,
                    "hits": self.hits, "misses": self.misses}


def _size(embedding: ImageEmbedding) -> int:
    return embedding.nbytes
