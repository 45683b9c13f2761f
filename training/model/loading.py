"""Build SamAdapter models from base weights, fresh or from a saved artifact."""

from __future__ import annotations

import logging

from training.model.adapter import (
    AdapterMismatchError,
    BaseIdentity,
    SamAdapter,
    check_base,
    check_classes,
    read_artifact,
)
from training.model.config import AdapterConfig
from training.model.weights import BaseWeights, load_base_model

log = logging.getLogger(__name__)


def base_identity(weights: BaseWeights, image_size: int) -> BaseIdentity:
    return BaseIdentity(weights.model_type, weights.sha256, image_size)


def new_adapter_model(weights: BaseWeights, image_size: int, class_names: list[str],
                      config: AdapterConfig | None = None) -> SamAdapter:
    """A fresh adapter (LoRA B = 0, random class prompts) on the base model."""
    sam = load_base_model(weights, image_size)
    return SamAdapter(sam, base_identity(weights, image_size), class_names, config or AdapterConfig())


def load_adapter_model(data: bytes, weights: BaseWeights, image_size: int,
                       expected_classes: list[str] | None = None) -> SamAdapter:
    """Rebuild a saved adapter on the base model; mismatched base or classes raise AdapterMismatchError."""
    header, tensors = read_artifact(data)
    base = base_identity(weights, image_size)
    check_base(header, base)
    if expected_classes is not None:
        check_classes(header, expected_classes)
    try:
        config = AdapterConfig.from_dict(header["adapter_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterMismatchError(f"adapter has an unreadable config: {exc}") from exc
    model = SamAdapter(load_base_model(weights, image_size), base, header["class_names"], config)
    model.apply_artifact(header, tensors)
    return model


def model_label(base: BaseIdentity) -> str:
    """Short name of the base model for model_version strings; says loudly when weights are random."""
    suffix = "-RANDOM-WEIGHTS" if base.is_random else ""
    return f"samloop-{base.model_type}-{base.image_size}{suffix}"
