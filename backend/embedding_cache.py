"""LRU cache of image embeddings bounded in bytes.

Keys are (image content digest, encoder identity): the same picture under another URL hits, and
an adapter that changes the encoder gets its own entries.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

from training.inference.predictor import ImageEmbedding


class EmbeddingCache:
    """Thread-safe LRU of ``ImageEmbedding`` objects, at most ``max_bytes`` of tensors in total."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, ImageEmbedding] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> ImageEmbedding | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: Hashable, embedding: ImageEmbedding) -> None:
        size = embedding.nbytes
        with self._lock:
            if size > self.max_bytes:
                return  # a cache of 0 MB (or an entry larger than the cache) stores nothing
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[key] = embedding
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._items), "bytes": self._bytes, "max_bytes": self.max_bytes,
                    "hits": self.hits, "misses": self.misses}
