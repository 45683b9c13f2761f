"""What an adapter consists of: which parts of SAM are tuned, and how.

Two kinds (``ADAPTER_KINDS``), chosen per project:

- ``decoder`` (the default): the image encoder stays the base model's, so an image embedding depends
  only on (base weights, image size, image content). It is computed once, kept, and shared by every
  adapter version, clicks, batch predictions and training; training runs on stored embeddings.
- ``encoder``: peft LoRA on the encoder's qkv projections as well, for strong domain shifts; every
  version then needs its own embeddings and each training step runs the encoder forward and backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from training.model.kinds import ADAPTER_KINDS, DECODER_TUNINGS, ENCODER_TUNINGS, AdapterKind, PartTuning, kind_of
from training.options import JsonOptions

ENCODER_MODES = tuple(ENCODER_TUNINGS)
DECODER_MODES = tuple(DECODER_TUNINGS)
NORM_STATISTICS = ("auto", "update", "frozen")
CLASS_DECODINGS = ("joint", "separate")


@dataclass
class AdapterConfig(JsonOptions):
    """Which SAM parts an adapter tunes.

    encoder: ``lora`` (peft LoRA on ``lora_targets``, base weights frozen), ``full`` (every encoder
        weight trained and BatchNorm statistics updated; the artifact then carries the whole
        encoder) or ``frozen``.
    decoder: ``lora`` (peft LoRA on the decoder's attention projections), ``train`` (all decoder
        weights; ~16 MB artifact) or ``frozen``.
    prompt_tokens: learned sparse prompt tokens per class (always trained).
    class_decoding: ``joint`` decodes every class of an image in one decoder pass (all classes'
        tokens side by side; each class's first token output is its mask token), so the cost per
        image does not grow with the class count (measured at 1024 px, 1 thread: 115-130 ms for 1-8
        classes); ``separate`` runs the decoder once per class (165 ms for 1 class, 1.1 s for 8),
        as adapters made before joint decoding do.
    norm_statistics: whether the encoder's BatchNorm running statistics follow the training images
        (they are then saved with the adapter): ``update``, ``frozen``, or ``auto`` = update for a
        full fine-tune or a randomly initialised base (whose statistics mean nothing; measured: a
        random encoder with frozen statistics learns nothing), frozen for pretrained LoRA.
    """

    OPTION_KIND = "adapter option"

    encoder: str = "frozen"
    # Measured on a pretrained stand-in with a frozen encoder (8 images of a new scene family, 200 steps):
    # held-out mIoU 0.49 with decoder LoRA, 0.38 with the whole decoder, which overfits. On random weights
    # with the encoder adapted too, only the whole decoder formed masks in 150 steps (the encoder kind).
    decoder: str = "lora"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["qkv"])
    decoder_lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])
    prompt_tokens: int = 2
    norm_statistics: str = "auto"
    class_decoding: str = "joint"

    @classmethod
    def for_kind(cls, kind: str, **options) -> AdapterConfig:
        """The configuration of adapter kind ``kind`` (see ADAPTER_KINDS), with ``options`` on top."""
        if kind not in ADAPTER_KINDS:
            raise ValueError(f"adapter kind {kind!r} is not one of {', '.join(ADAPTER_KINDS)}")
        config = cls.from_dict({**ADAPTER_KINDS[kind].modes, **options})
        if config.kind != kind:
            raise ValueError(f"adapter option encoder={config.encoder!r} contradicts adapter kind {kind!r}")
        return config

    @property
    def kind(self) -> str:
        """``decoder`` when the image encoder is the base model's, else ``encoder``."""
        return self.adapter_kind.name

    @property
    def adapter_kind(self) -> AdapterKind:
        return kind_of(self.encoder_tuning)

    @property
    def encoder_tuning(self) -> PartTuning:
        return ENCODER_TUNINGS[self.encoder]

    @property
    def decoder_tuning(self) -> PartTuning:
        return DECODER_TUNINGS[self.decoder]

    @property
    def keeps_base_embeddings(self) -> bool:
        """Whether image embeddings are the base encoder's (stored once, valid for every version)."""
        return self.adapter_kind.keeps_base_embeddings

    def __post_init__(self) -> None:
        if self.encoder not in ENCODER_MODES:
            raise ValueError(f"encoder mode {self.encoder!r} is not one of {', '.join(ENCODER_MODES)}")
        if self.decoder not in DECODER_MODES:
            raise ValueError(f"decoder mode {self.decoder!r} is not one of {', '.join(DECODER_MODES)}")
        if not isinstance(self.lora_rank, int) or self.lora_rank < 1:
            raise ValueError(f"lora_rank must be a positive integer, got {self.lora_rank!r}")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be positive, got {self.lora_alpha!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.encoder_tuning.injects_lora and not self.lora_targets:
            raise ValueError(f"encoder mode {self.encoder!r} needs at least one module name in lora_targets")
        if self.decoder_tuning.injects_lora and not self.decoder_lora_targets:
            raise ValueError(f"decoder mode {self.decoder!r} needs at least one module name in "
                             "decoder_lora_targets")
        if not isinstance(self.prompt_tokens, int) or not 1 <= self.prompt_tokens <= 16:
            raise ValueError(f"prompt_tokens must be an integer in 1..16, got {self.prompt_tokens!r}")
        if self.norm_statistics not in NORM_STATISTICS:
            raise ValueError(f"norm_statistics {self.norm_statistics!r} is not one of {', '.join(NORM_STATISTICS)}")
        if self.class_decoding not in CLASS_DECODINGS:
            raise ValueError(f"class_decoding {self.class_decoding!r} is not one of {', '.join(CLASS_DECODINGS)}")
        self.lora_targets = list(self.lora_targets)
        self.decoder_lora_targets = list(self.decoder_lora_targets)

    def updates_norm_statistics(self, base_is_random: bool) -> bool:
        if self.keeps_base_embeddings:
            return False  # the embeddings must stay the base model's, valid for every version
        if self.norm_statistics == "auto":
            return self.encoder_tuning.trains_whole or base_is_random
        return self.norm_statistics == "update"
