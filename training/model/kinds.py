"""Adapter kinds and part tunings as registered strategies (as peft registers its tuners).

A part tuning says what happens to one part of the base model (image encoder or mask decoder): what it
injects (peft LoRA layers), what it trains, and what the adapter file saves of it. An adapter kind
says which tunings make it and whether it keeps the base model's image embeddings (then computed once,
stored, shared by every version, and training runs on them). ``AdapterConfig`` names tunings and kinds;
``SamAdapter`` asks them, never compares strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and peft load only when an adapter is built: settings import this module
    from torch import nn


@dataclass(frozen=True)
class PartTuning:
    """How one part is tuned. ``injects_lora``: peft LoRA layers on the named target modules;
    ``trains_whole``: every weight trains and the whole part is saved with the adapter."""

    name: str
    injects_lora: bool = False
    trains_whole: bool = False

    @property
    def changes_part(self) -> bool:
        return self.injects_lora or self.trains_whole

    def inject(self, part: nn.Module, rank: int, alpha: float, dropout: float, targets: list[str]) -> None:
        """Add this tuning's layers to ``part`` (frozen before) and mark what trains."""
        if self.injects_lora:
            from peft import LoraConfig, inject_adapter_in_model

            lora = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets)
            try:
                inject_adapter_in_model(lora, part)
            except ValueError as exc:
                raise ValueError(f"LoRA target modules {targets} not found in {type(part).__name__}: {exc}") from exc
        for name, param in part.named_parameters():
            if self.trains_whole or (self.injects_lora and "lora_" in name):
                param.requires_grad_(True)

    def saves(self, name: str) -> bool:
        """Whether the adapter file keeps tensor ``name`` (relative to the part)."""
        return self.trains_whole or (self.injects_lora and "lora_" in name)


FROZEN = PartTuning("frozen")
LORA = PartTuning("lora", injects_lora=True)
WHOLE = PartTuning("whole", trains_whole=True)

# The config's mode names for each part -> the tuning.
ENCODER_TUNINGS: dict[str, PartTuning] = {"lora": LORA, "full": WHOLE, "frozen": FROZEN}
DECODER_TUNINGS: dict[str, PartTuning] = {"lora": LORA, "train": WHOLE, "frozen": FROZEN}


@dataclass(frozen=True)
class AdapterKind:
    """A kind of adapter: its default part modes and whether it keeps the base image embeddings."""

    name: str
    modes: dict[str, str] = field(default_factory=dict)  # AdapterConfig options that make the kind
    keeps_base_embeddings: bool = True
    description: str = ""


ADAPTER_KINDS: dict[str, AdapterKind] = {}


def register_kind(kind: AdapterKind) -> AdapterKind:
    ADAPTER_KINDS[kind.name] = kind
    return kind


register_kind(AdapterKind(
    "decoder", {"encoder": "frozen", "decoder": "lora"}, keeps_base_embeddings=True,
    description="LoRA in the mask decoder (or the whole decoder) and class prompts; base encoder"))
register_kind(AdapterKind(
    "encoder", {"encoder": "lora", "decoder": "train"}, keeps_base_embeddings=False,
    description="LoRA on the encoder's qkv projections too; every version needs its own embeddings"))


def kind_of(encoder: PartTuning) -> AdapterKind:
    """The kind an encoder tuning makes: a changed encoder means embeddings of its own."""
    keeps = not encoder.changes_part
    return next(k for k in ADAPTER_KINDS.values() if k.keeps_base_embeddings == keeps)
