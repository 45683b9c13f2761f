"""What a ``make bench`` run measures: the variants (model x image size x weights) and their scenarios."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmarks.scenarios import TracePlan

__all__ = ["RunPlan", "VariantPlan", "clicks_plan", "compare_plan", "full_plan", "quick_plan",
           "trained_masks_variant"]


@dataclass
class VariantPlan:
    model: str
    image_size: int
    trace: TracePlan
    batch_sizes: list[int]
    training_sizes: list[int] = field(default_factory=list)
    baseline_training_sizes: list[int] = field(default_factory=list)
    # Also train on this many images while an annotator keeps clicking (optimized only; None: skip).
    clicks_during_training: int | None = None
    # ... and once more with the worker at the backend's CPU priority.
    renice_worker: bool = True
    note: str = ""
    # ``random``, or ``standin``: the tests' pretrained stand-in (``testkit.standin``), whose masks are
    # compact like a real checkpoint's, so answers are a few KB instead of a random model's ~0.6 MB.
    checkpoint: str = "random"

    @property
    def name(self) -> str:
        suffix = "" if self.checkpoint == "random" else f"-{self.checkpoint}"
        return f"{self.model}-{self.image_size}{suffix}"

    @property
    def images_needed(self) -> int:
        return self.trace.images_needed + sum(self.batch_sizes)


@dataclass
class RunPlan:
    mode: str
    variants: list[VariantPlan]
    image_hw: tuple[int, int] = (960, 1280)
    rle_hw: tuple[int, int] = (1024, 1024)  # the brush RLE micro-benchmark's masks
    train_max_seconds: float = 30.0
    micro_size: int = 1024
    micro_repeats: int = 7
    micro_encoder_repeats: int = 2
    training_timeout: float = 900.0
    # Extra environment for every backend (experiments, e.g. MALLOC_ARENA_MAX=2); recorded in the results.
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def images_needed(self) -> int:
        return max(v.images_needed for v in self.variants)

    @property
    def photos_needed(self) -> int:
        return max(v.trace.photos for v in self.variants)

    @property
    def training_sizes(self) -> list[int]:
        return sorted({n for v in self.variants for n in [*v.training_sizes, *v.baseline_training_sizes]})

    @property
    def concurrent_sizes(self) -> list[int]:
        return sorted({v.clicks_during_training for v in self.variants if v.clicks_during_training})


STANDIN_NOTE = ("The pretrained stand-in (a vit_t trained on synthetic scenes at 256 px, built once and cached): "
                "its masks are compact, as a real checkpoint's are, so answers are KB, not a random model's ~1 MB.")


def trained_masks_variant(trace: TracePlan) -> VariantPlan:
    """vit_t-1024 with compact masks: the clicks an annotator with the official checkpoint waits for, also
    while 10 images train (the worker at its default priority)."""
    return VariantPlan("vit_t", 1024, trace, [8], clicks_during_training=10, renice_worker=False,
                       checkpoint="standin", note=STANDIN_NOTE)


def full_plan() -> RunPlan:
    trace = TracePlan(new_images=20, clicks=5, cold_images=5, revisits=10, revisit_clicks=2, photos=2, context_images=4)
    return RunPlan("full", [
        VariantPlan("vit_t", 1024, trace, [1, 8, 32], [5, 10, 25], [10], clicks_during_training=10),
        trained_masks_variant(TracePlan(new_images=20, clicks=5, cold_images=5, revisits=10, revisit_clicks=2)),
        VariantPlan("vit_t", 512, trace, [1, 8, 32], [10], [10]),
        VariantPlan("vit_b", 1024, TracePlan(new_images=3, clicks=5, cold_images=2, revisits=3, revisit_clicks=2),
                    [4], [], [], note="vit_b is slow on 2 CPU cores: 5 images in the trace and a batch of 4. Not "
                                      "trained here: SAM's ViT computes global attention explicitly, so training at "
                                      "1024 px keeps ~3 GB (bf16) to ~6.5 GB (fp32) of activations per image for the "
                                      "backward pass; the default batch of 4 does not fit this shared 23 GB machine."),
    ])


def clicks_plan() -> RunPlan:
    """The click parts of the full vit_t-1024 run: the trace, clicks with drafted regions, clicks while 10 train."""
    trace = TracePlan(new_images=20, clicks=5, cold_images=5, revisits=10, revisit_clicks=2, context_images=4)
    return RunPlan("clicks", [VariantPlan("vit_t", 1024, trace, [8], clicks_during_training=10, renice_worker=False),
                              trained_masks_variant(trace)])


def compare_plan() -> RunPlan:
    """A shorter vit_t-1024 run for before/after comparisons of a change (no training)."""
    trace = TracePlan(new_images=8, clicks=5, cold_images=3, revisits=6, revisit_clicks=2)
    return RunPlan("compare", [VariantPlan("vit_t", 1024, trace, [8])])


def quick_plan() -> RunPlan:
    trace = TracePlan(new_images=2, clicks=2, cold_images=1, revisits=2, revisit_clicks=1, context_images=1)
    variant = VariantPlan("vit_t", 128, trace, [2], [3], [], clicks_during_training=3, renice_worker=False)
    return RunPlan("quick", [variant], image_hw=(120, 160), rle_hw=(120, 160), train_max_seconds=1.0, micro_size=128,
                   micro_repeats=2, micro_encoder_repeats=1, training_timeout=120.0)

