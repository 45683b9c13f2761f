"""Inference: image embeddings, promptless class masks and interactive masks from a ``SamAdapter``.

- ``predictor``: ``Predictor`` (batched encoder, per-pixel class resolution, clicks and boxes).
- ``runtime``: the device rule, precision (bf16 autocast only where native) and intra-op thread caps.

Imports ``training.model``.
"""
