"""What an adapter consists of: which parts of SAM are tuned, and how."""

from __future__ import annotations

from dataclasses import dataclass, field

from training.options import JsonOptions

ENCODER_MODES = ("lora", "full", "frozen")
DECODER_MODES = ("lora", "train", "frozen")
NORM_STATISTICS = ("auto", "update", "frozen")


@dataclass
class AdapterConfig(JsonOptions):
    """Which SAM parts an adapter tunes.

    encoder: ``lora`` (peft LoRA on ``lora_targets``, base weights frozen), ``full`` (every encoder
        weight trained and BatchNorm statistics updated; the artifact then carries the whole
        encoder) or ``frozen``.
    decoder: ``lora`` (peft LoRA on the decoder's attention projections), ``train`` (all decoder
        weights; ~16 MB artifact) or ``frozen``.
    prompt_tokens: learned sparse prompt tokens per class (always trained).
    norm_statistics: whether the encoder's BatchNorm running statistics follow the training images
        (they are then saved with the adapter): ``update``, ``frozen``, or ``auto`` = update for a
        full fine-tune or a randomly initialised base (whose statistics mean nothing; measured: a
        random encoder with frozen statistics learns nothing), frozen for pretrained LoRA.
    """

    OPTION_KIND = "adapter option"

    encoder: str = "lora"
    # Measured on random weights (256 px, 8 synthetic images): with a LoRA decoder the class masks
    # did not form within 150 steps; with the whole decoder trained they did. ~16 MB artifact.
    decoder: str = "train"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["qkv"])
    decoder_lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"])
    prompt_tokens: int = 2
    norm_statistics: str = "auto"

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
        if self.encoder == "lora" and not self.lora_targets:
            raise ValueError("encoder mode 'lora' needs at least one module name in lora_targets")
        if self.decoder == "lora" and not self.decoder_lora_targets:
            raise ValueError("decoder mode 'lora' needs at least one module name in decoder_lora_targets")
        if not isinstance(self.prompt_tokens, int) or not 1 <= self.prompt_tokens <= 16:
            raise ValueError(f"prompt_tokens must be an integer in 1..16, got {self.prompt_tokens!r}")
        if self.norm_statistics not in NORM_STATISTICS:
            raise ValueError(f"norm_statistics {self.norm_statistics!r} is not one of {', '.join(NORM_STATISTICS)}")
        self.lora_targets = list(self.lora_targets)
        self.decoder_lora_targets = list(self.decoder_lora_targets)


    def updates_norm_statistics(self, base_is_random: bool) -> bool:
        if self.norm_statistics == "auto":
            return self.encoder == "full" or base_is_random
        return self.norm_statistics == "update"
