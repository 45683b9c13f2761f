"""Base-encoder embeddings of training images: read from the store, else encoded once and stored.

Used when the adapter leaves the image encoder frozen (the "decoder" kind): training then never runs
the encoder in its loop. An image the backend has encoded already (same base weights, image size and
content) costs nothing; a second run on the same images encodes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from cachetools import LRUCache

from training.data.images import image_digest
from training.inference.embedding_store import EmbeddingStore, embedding_key
from training.inference.predictor import ImageEmbedding, Predictor
from training.model.adapter import SamAdapter
from training.model.features import ImageFeatures

log = logging.getLogger(__name__)


class TrainingEmbeddings:
    """Embeddings of H x W x 3 uint8 images under ``model``'s (frozen) encoder.

    Args:
        model: an adapter whose image encoder is the base model's (``config.keeps_base_embeddings``).
        store: the shared on-disk store, or None to encode every image (kept in memory only).
        precision: the encoder's precision (auto|bf16|fp32, as ``Predictor``).
        memo_entries: most embeddings kept in memory (None: all this object was asked for).
    """

    def __init__(self, model: SamAdapter, store: EmbeddingStore | None = None, precision: str = "auto",
                 memo_entries: int | None = None) -> None:
        if not model.config.keeps_base_embeddings:
            raise ValueError(f"stored embeddings need a frozen image encoder; this adapter is of the "
                             f"{model.config.kind!r} kind (encoder {model.config.encoder!r})")
        self.model = model
        self.store = store
        self.predictor = Predictor(model, precision=precision)
        self.encoded = 0  # images that went through the encoder (tests and progress)
        self.reused = 0  # images found in the store
        # This run's embeddings by image digest; ``memo_entries`` bounds them (a run over a large project
        # must not hold every embedding: 4 MB each at 1024 px), the store has the rest.
        self._memo: dict[str, ImageEmbedding] | LRUCache = {} if memo_entries is None else LRUCache(memo_entries)

    def get(self, image: np.ndarray) -> ImageEmbedding:
        """The image's embedding (1 x 256 x G x G float32 on the CPU) with its geometry."""
        return self.get_by_digest(image_digest(image), lambda: image)

    def get_by_digest(self, digest: str, load: Callable[[], np.ndarray]) -> ImageEmbedding:
        """The embedding of the image whose content digest is ``digest``; ``load()`` gives the image,
        called only when the store does not have it (a cached task then needs no image decode)."""
        if digest in self._memo:
            return self._memo[digest]
        key = embedding_key(self.model.base, digest)
        found = self.store.get(key) if self.store is not None else None
        if found is not None:
            self.reused += 1
        else:
            found = self.predictor.embed([load()], batch_size=1)[0]
            self.encoded += 1
            if self.store is not None:
                self.store.put(key, found)
        # Outside inference mode a clone is an ordinary tensor that autograd may save.
        features = found.features.map(lambda t: t.clone().cpu())
        found = ImageEmbedding(features.embedding, found.input_size, found.original_size, features.high_res)
        self._memo[digest] = found
        return found

    def embed(self, image: np.ndarray) -> ImageFeatures:
        """The image's features on the model's device, for training."""
        return self.get(image).features.to(self.model.device)
