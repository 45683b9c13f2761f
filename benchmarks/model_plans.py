"""``python -m benchmarks --models``: the base models side by side at 1024 px (vit_t, SAM 2.1 tiny and small).

The figures of docs/which-base-model.md: encoder seconds per image and warm clicks over HTTP (the annotator
trace), store bytes per image, training step time and backend/worker peak RSS (a training run of 5 images).
"""

from __future__ import annotations

from benchmarks.plans import RunPlan, VariantPlan
from benchmarks.scenarios import TracePlan

MODELS = ("vit_t", "sam2.1_hiera_t", "sam2.1_hiera_s")


def models_plan() -> RunPlan:
    trace = TracePlan(new_images=6, clicks=5, cold_images=2, revisits=4, revisit_clicks=2)
    return RunPlan("models", [VariantPlan(model, 1024, trace, [4], [5], []) for model in MODELS])
