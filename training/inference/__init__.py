"""Inference: image embeddings, promptless class masks and interactive masks from a ``SamAdapter``.

- ``predictor``: ``Predictor`` (batched encoder, per-pixel class resolution, clicks and boxes); any base-model
  family (``training.model.base_models``), its features in ``ImageEmbedding``.
- ``embedding_store``: image embeddings on disk (diskcache, bounded, half precision, CRC-checked), keyed by
  base weights, image size and image content; shared by the backend and the training worker.
- ``devices``: the device rule (auto, cpu, cuda, cuda:N), torch-free for settings to check.
- ``runtime``: the device rule, precision (bf16 autocast only where native) and intra-op thread caps.
- ``priority``: requests first: background encoding pauses at encoder blocks while a request runs.
- ``projection_cache``: clicks on one image reuse the image-only projections of SAM's decoder.
- ``click_memory``: the previous mask of a click sequence, fed back to families that take it (SAM 2).

Imports ``training.model`` and ``training.data.images``.
"""
