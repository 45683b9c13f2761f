"""The model: SAM builders by name, base weights, the adapter and its file format, adapter options.

- ``base_models``: ``BASE_MODELS``, the one registry of base models (vit_t, vit_b/l/h, sam2.1_hiera_t/s/b+/l):
  family, builder at any supported image size, official checkpoint and SHA-256, feature layout.
- ``families``: what differs between model families (building, encoding, prompting, decoding); the only
  place that imports a model package.
- ``features``: ``ImageFeatures``, an image's encoder output (embedding and the family's finer maps).
- ``kinds``: adapter kinds and part tunings as registered strategies (what each injects, trains, saves).
- ``weights``: which base weights (official checkpoint, a file, or seeded random) and loading them.
- ``config``: ``AdapterConfig``, the adapter's options (checked on construction).
- ``adapter``: ``SamAdapter``, the base model plus LoRA and learned class prompts.
- ``artifact``: the adapter file (safetensors + a typed JSON header) and compatibility checks.
- ``loading``: a new or a saved adapter on given base weights, in one call.

Imports only ``training.options`` and third-party packages (``segment_anything``, ``mobile_sam`` and ``sam2``
only inside ``families``).
"""
