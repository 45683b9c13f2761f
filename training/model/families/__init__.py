"""Model families behind the base-model seam: how each one's modules are built, encode, prompt and decode.

- ``base``: ``Family``, the operations the adapter, predictor, trainer and caches ask of a family.
- ``sam1``: SAM 1 (MobileSAM ``vit_t``, SAM ``vit_b/l/h``) from ``segment_anything`` and ``mobile_sam``.
- ``sam2``: SAM 2.1 Hiera from ``sam2`` (the ``rf-sam-2`` wheel), imported only when one is built.

The registry of named base models is ``training.model.base_models``. Imports torch, the model packages
and ``training.model.features`` only.
"""
