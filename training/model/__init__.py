"""The model: SAM builders by name, base weights, the adapter and its file format, adapter options.

- ``builders``: ``MODEL_BUILDERS`` (vit_t, vit_b, vit_l, vit_h) at any image size that is a multiple of 16.
- ``weights``: which base weights (official checkpoint, a file, or seeded random) and loading them.
- ``config``: ``AdapterConfig``, the adapter's options (checked on construction).
- ``adapter``: ``SamAdapter``, the base model plus LoRA and learned class prompts.
- ``artifact``: the adapter file (safetensors + a typed JSON header) and compatibility checks.
- ``loading``: a new or a saved adapter on given base weights, in one call.

Imports only ``training.options`` and third-party packages.
"""
