"""The adapter file: safetensors tensors plus one JSON header, parsed once into ``AdapterHeader``.

An adapter is bound to a base model (``BaseIdentity``: model type, checkpoint hash, image size)
and a class list; loading it anywhere else raises ``AdapterMismatchError`` naming both sides.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import safetensors.torch
import torch

from training.model.config import AdapterConfig

ARTIFACT_FORMAT = "samloop-adapter/1"
# Header fields the typed object owns; everything else (training metadata) is kept in ``extra``.
_OWN_FIELDS = ("format", "base", "class_names", "adapter_config", "created")


class AdapterMismatchError(ValueError):
    """An adapter does not belong to this base model or class list, or is no adapter at all."""


@dataclass(frozen=True)
class BaseIdentity:
    """The base model an adapter is bound to."""

    model_type: str
    checkpoint_sha256: str
    image_size: int

    def to_dict(self) -> dict:
        return {"model_type": self.model_type, "checkpoint_sha256": self.checkpoint_sha256,
                "image_size": self.image_size}

    @property
    def is_random(self) -> bool:
        return self.checkpoint_sha256 == "random"

    def describe(self) -> str:
        return f"{self.model_type} (checkpoint {self.checkpoint_sha256[:12]}, {self.image_size} px)"


@dataclass(frozen=True)
class AdapterHeader:
    """What an adapter file says about itself."""

    base: BaseIdentity
    class_names: list[str]
    config: AdapterConfig
    created: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)  # training metadata, free-form JSON

    def to_json(self) -> dict[str, Any]:
        return {"format": ARTIFACT_FORMAT, "base": self.base.to_dict(), "class_names": list(self.class_names),
                "adapter_config": self.config.to_dict(), "created": self.created, **self.extra}

    @classmethod
    def from_json(cls, raw: Any) -> AdapterHeader:
        """Parse a header dict; anything missing or malformed raises AdapterMismatchError."""
        if not isinstance(raw, dict) or raw.get("format") != ARTIFACT_FORMAT:
            shown = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
            raise AdapterMismatchError(f"not a samloop adapter (format {shown!r})")
        try:
            base = BaseIdentity(**raw["base"])
            # Adapters written before joint class decoding decoded each class on its own.
            config = AdapterConfig.from_dict({"class_decoding": "separate", **(raw.get("adapter_config") or {})})
            class_names = [str(name) for name in raw["class_names"]]
            created = float(raw.get("created") or 0.0)
        except (KeyError, TypeError, ValueError) as exc:
            raise AdapterMismatchError(f"adapter header is unreadable: {exc}") from exc
        extra = {k: v for k, v in raw.items() if k not in _OWN_FIELDS}
        return cls(base, class_names, config, created, extra)

    def check_base(self, base: BaseIdentity) -> None:
        if self.base != base:
            raise AdapterMismatchError(f"adapter was trained on {self.base.describe()}, "
                                       f"but this base model is {base.describe()}")

    def check_classes(self, class_names: list[str]) -> None:
        if self.class_names != list(class_names):
            raise AdapterMismatchError(f"adapter classes {self.class_names} differ from the expected "
                                       f"{list(class_names)}")


@dataclass(frozen=True)
class Artifact:
    """A parsed adapter file."""

    header: AdapterHeader
    tensors: dict[str, torch.Tensor]


def write_artifact(header: AdapterHeader, tensors: dict[str, torch.Tensor]) -> bytes:
    """Serialise ``tensors`` (moved to CPU, made contiguous) with ``header``."""
    plain = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return safetensors.torch.save(plain, metadata={"samloop": json.dumps(header.to_json())})


def read_artifact(data: bytes) -> Artifact:
    """Parse adapter bytes. Raises AdapterMismatchError if they are not a samloop adapter."""
    try:
        tensors = safetensors.torch.load(data)
        raw = json.loads(_safetensors_metadata(data).get("samloop", "{}"))
    except Exception as exc:  # safetensors raises its own error types for junk input
        raise AdapterMismatchError(f"not a samloop adapter file: {exc}") from exc
    return Artifact(AdapterHeader.from_json(raw), tensors)


def _safetensors_metadata(data: bytes) -> dict:
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]).get("__metadata__", {})
