"""Build SamAdapter models from base weights, fresh or from a saved artifact."""

from __future__ import annotations

import torch

from training.model.adapter import SamAdapter
from training.model.artifact import BaseIdentity, read_artifact
from training.model.config import AdapterConfig
from training.model.weights import BaseWeights, load_base_model


def base_identity(weights: BaseWeights, image_size: int) -> BaseIdentity:
    return BaseIdentity(weights.model_type, weights.sha256, image_size)


def new_adapter_model(weights: BaseWeights, image_size: int, class_names: list[str],
                      config: AdapterConfig | None = None, sam: torch.nn.Module | None = None) -> SamAdapter:
    """A fresh adapter (LoRA B = 0, random class prompts) on the base model (``sam``: an untouched copy of
    it already built, else it is loaded from ``weights``)."""
    sam = sam if sam is not None else load_base_model(weights, image_size)
    return SamAdapter(sam, base_identity(weights, image_size), class_names, config or AdapterConfig())


def load_adapter_model(data: bytes, weights: BaseWeights, image_size: int,
                       expected_classes: list[str] | None = None, sam: torch.nn.Module | None = None) -> SamAdapter:
    """Rebuild a saved adapter on the base model (``sam`` as ``new_adapter_model``); mismatched base or
    classes raise AdapterMismatchError."""
    artifact = read_artifact(data)
    base = base_identity(weights, image_size)
    artifact.header.check_base(base)
    if expected_classes is not None:
        artifact.header.check_classes(expected_classes)
    sam = sam if sam is not None else load_base_model(weights, image_size)
    model = SamAdapter(sam, base, artifact.header.class_names, artifact.header.config)
    model.apply_artifact(artifact)
    return model


def model_label(base: BaseIdentity) -> str:
    """Short name of the base model for model_version strings; says loudly when weights are random."""
    suffix = "-RANDOM-WEIGHTS" if base.is_random else ""
    return f"samloop-{base.model_type}-{base.image_size}{suffix}"
