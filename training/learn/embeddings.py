"""Base-encoder embeddings of training images: read from the store, else encoded once and stored.

Used when the adapter leaves the image encoder frozen (the "decoder" kind): training then never runs
the encoder in its loop. An image the backend has encoded already (same base weights, image size and
content) costs nothing; a second run on the same images encodes nothing.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from training.data.images import image_digest
from training.inference.embedding_store import EmbeddingStore, embedding_key
from training.inference.predictor import Predictor
from training.model.adapter import SamAdapter

log = logging.getLogger(__name__)


class TrainingEmbeddings:
    """Embeddings of H x W x 3 uint8 images under ``model``'s (frozen) encoder.

    Args:
        model: an adapter whose image encoder is the base model's (``config.encoder == "frozen"``).
        store: the shared on-disk store, or None to encode every image (kept in memory only).
        precision: the encoder's precision (auto|bf16|fp32, as ``Predictor``).
    """

    def __init__(self, model: SamAdapter, store: EmbeddingStore | None = None, precision: str = "auto") -> None:
        if model.config.encoder != "frozen":
            raise ValueError("stored embeddings need a frozen image encoder; this adapter's encoder is "
                             f"{model.config.encoder!r}")
        self.model = model
        self.store = store
        self.predictor = Predictor(model, precision=precision)
        self.encoded = 0  # images that went through the encoder (tests and progress)
        self.reused = 0  # images found in the store

    def embed(self, image: np.ndarray) -> torch.Tensor:
        """1 x 256 x G x G float32 embedding on the model's device (a plain tensor, safe for autograd)."""
        key = embedding_key(self.model.base, image_digest(image))
        found = self.store.get(key) if self.store is not None else None
        if found is not None:
            self.reused += 1
        else:
            found = self.predictor.embed([image], batch_size=1)[0]
            self.encoded += 1
            if self.store is not None:
                self.store.put(key, found)
        # Outside inference mode a clone is an ordinary tensor that autograd may save.
        return found.embedding.clone().to(self.model.device)
