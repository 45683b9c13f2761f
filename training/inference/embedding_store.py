"""Image embeddings on disk: computed once per (base weights, image size, image content), kept for good.

With a frozen image encoder (the "decoder" adapter kind) an embedding is valid for every adapter
version, so the backend (clicks, batch predictions, encoding ahead of the annotator) and the
training worker share one store. It is a ``diskcache.Cache`` (SQLite index plus files, safe across
threads and processes) bounded in bytes, least recently used entries going first. Entries are half
precision (a 1024 px vit_t embedding is 2 MB instead of 4) with a CRC32 of their bytes: a corrupt or
truncated entry is dropped and recomputed, never served. An entry holds every feature map of the
family's layout (SAM 2.1: the embedding and its two high-resolution maps, 8 MB at 1024 px).
"""

from __future__ import annotations

import json
import logging
import struct
import threading
import zlib
from pathlib import Path

import diskcache
import numpy as np
import torch

from training.inference.predictor import ImageEmbedding
from training.model.artifact import BaseIdentity

log = logging.getLogger(__name__)

MB = 1024 * 1024
_HEADER_LENGTH = struct.Struct(">I")


def embedding_key(base: BaseIdentity, digest: str) -> str:
    """The store key of an image (content ``digest``) under ``base``'s encoder."""
    return f"{base.model_type}:{base.checkpoint_sha256}:{base.image_size}:{digest}"


def encode_entry(embedding: ImageEmbedding, half: bool = True) -> bytes:
    """``embedding`` as bytes: a length-prefixed JSON header (shapes, geometry, CRC32), then the values of
    each feature tensor in turn."""
    dtype = torch.float16 if half else torch.float32
    values = [t.detach().to("cpu", dtype).contiguous() for t in embedding.features.tensors()]
    payload = b"".join(v.numpy().tobytes() for v in values)
    header = {"shapes": [list(v.shape) for v in values], "dtype": "float16" if half else "float32",
              "input_size": list(embedding.input_size), "original_size": list(embedding.original_size),
              "crc32": zlib.crc32(payload)}
    raw = json.dumps(header).encode()
    return _HEADER_LENGTH.pack(len(raw)) + raw + payload


def decode_entry(data: bytes) -> ImageEmbedding:
    """The inverse of ``encode_entry``. Raises ValueError for anything truncated or corrupt."""
    try:
        (length,) = _HEADER_LENGTH.unpack_from(data)
        header = json.loads(data[_HEADER_LENGTH.size : _HEADER_LENGTH.size + length])
        payload = data[_HEADER_LENGTH.size + length :]
        # Entries written before feature layouts hold one tensor under "shape".
        shapes = [tuple(int(n) for n in s) for s in header.get("shapes") or [header["shape"]]]
        dtype = np.dtype(header["dtype"])
        counts = [int(np.prod(shape)) for shape in shapes]
        expected = sum(counts) * dtype.itemsize
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"unreadable embedding entry header: {exc}") from exc
    if len(payload) != expected or zlib.crc32(payload) != header["crc32"]:
        raise ValueError(f"embedding entry holds {len(payload)} bytes (expected {expected}) or fails its CRC")
    flat = np.frombuffer(payload, dtype=dtype)
    tensors, start = [], 0
    for shape, count in zip(shapes, counts, strict=True):
        tensors.append(torch.from_numpy(flat[start : start + count].reshape(shape).astype(np.float32)))
        start += count
    return ImageEmbedding(tensors[0], tuple(header["input_size"]), tuple(header["original_size"]), tuple(tensors[1:]))


class EmbeddingStore:
    """A bounded on-disk store of ``ImageEmbedding`` by key (see ``embedding_key``).

    Args:
        directory: where the store lives (created if missing); processes may share it.
        max_bytes: bound on the stored entries' bytes; the least recently used go first beyond it.
        half: keep values in float16 (tests pin that clicks from them match float32 ones).
    """

    def __init__(self, directory: str | Path, max_bytes: int, half: bool = True) -> None:
        if max_bytes < MB:
            raise ValueError(f"the embedding store needs at least 1 MB, got {max_bytes} bytes")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.half = half
        self._cache = diskcache.Cache(str(self.directory), size_limit=max_bytes,
                                      eviction_policy="least-recently-used")
        self._lock = threading.Lock()
        self.hits = self.misses = self.corrupt = 0

    def get(self, key: str) -> ImageEmbedding | None:
        data = self._cache.get(key)
        if data is None:
            self._count("misses")
            return None
        try:
            embedding = decode_entry(data)
        except ValueError as exc:
            log.warning("embedding store entry %s is corrupt (%s); it will be recomputed", key, exc)
            self._cache.delete(key)
            self._count("corrupt")
            self._count("misses")
            return None
        self._count("hits")
        return embedding

    def put(self, key: str, embedding: ImageEmbedding) -> None:
        self._cache.set(key, encode_entry(embedding, self.half))

    def __contains__(self, key: str) -> bool:
        return key in self._cache

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def nbytes(self) -> int:
        """Bytes on disk, entries and SQLite index together: what ``max_bytes`` bounds."""
        return int(self._cache.volume())

    def stats(self) -> dict:
        return {"entries": len(self), "bytes": self.nbytes, "max_bytes": self.max_bytes, "hits": self.hits,
                "misses": self.misses, "corrupt": self.corrupt}

    def close(self) -> None:
        self._cache.close()

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)
