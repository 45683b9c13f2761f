"""The methods compared, and one benchmark cell: train on n labeled images, score on the held-out set.

- ``decoder``: samloop's default adapter kind (frozen encoder, decoder LoRA, class prompts).
- ``encoder``: the encoder kind (qkv LoRA in the encoder, the whole decoder, class prompts).
- ``full``: a full fine-tune (every encoder and decoder weight, class prompts).
- ``promptless``: the frozen encoder and a small upsampling head without prompts (``baseline``).

All train through ``train_adapter`` (the baseline through its own loop over the same samples), and
are scored by ``evaluate`` (promptless masks) and ``evaluate_clicks`` (simulated clicks, each object
asked with its class, as the backend asks an adapter). SAM's own decoder, asked with clicks alone,
is the click reference (the ``sam`` cell). Frozen-encoder methods share one set of embeddings.

Pictures: each adapter method's cell at the largest labeled count, first repeat, draws its first
``PICTURE_TASKS`` held-out tasks as [image | truth | SAM's decoder | the adapter] after
``DEFAULT_PICTURE_CLICKS`` simulated clicks (``training.learn.comparisons``) into
``<comparisons>/<cell>/``, when the cell is computed (a reused cell draws nothing).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.machine import describe, load_average
from benchmarks.quality.baseline import label_map, score_label_maps, train_head
from benchmarks.quality.cells import CellKey, PeakMemory
from benchmarks.quality.data import BenchmarkData, draw_order
from benchmarks.quality.plan import QualityPlan
from training.data.dataset import SegmentationDataset
from training.inference.predictor import ImageEmbedding, Predictor
from training.inference.runtime import resolve_device
from training.learn.clicks import evaluate_clicks
from training.learn.comparisons import DEFAULT_PICTURE_CLICKS, ClickDecoder, picture_tasks, write_comparisons
from training.learn.config import TrainConfig
from training.learn.embeddings import TrainingEmbeddings
from training.learn.evaluation import evaluate
from training.learn.trainer import train_adapter
from training.model.adapter import SamAdapter
from training.model.config import AdapterConfig
from training.model.loading import new_adapter_model
from training.model.weights import BaseWeights

log = logging.getLogger(__name__)

METHOD_LABELS = {
    "decoder": "decoder adapter (frozen encoder, decoder LoRA + class prompts)",
    "encoder": "encoder LoRA adapter (encoder qkv LoRA + decoder + class prompts)",
    "full": "full fine-tune (encoder + decoder + class prompts)",
    "promptless": "promptless baseline (frozen encoder + upsampling head, no prompts)",
    "sam": "SAM's own decoder (clicks only, no training)",
}
# Held-out tasks pictured per pictured cell: a few, so a committed run stays small.
PICTURE_TASKS = 2


def adapter_config(method: str) -> AdapterConfig:
    if method == "full":
        return AdapterConfig(encoder="full", decoder="train")
    return AdapterConfig.for_kind(method)


@dataclass
class BenchmarkContext:
    """What every cell shares: the plan, data, base weights, and the base encoder's embeddings."""

    plan: QualityPlan
    data: BenchmarkData
    weights: BaseWeights
    base: SamAdapter  # a fresh decoder-kind model: SAM's decoder for clicks, the frozen encoder
    train_embeddings: TrainingEmbeddings
    held_out_embeddings: list[ImageEmbedding]
    encode_seconds_per_image: float
    comparisons: Path | None = None  # where cells draw their pictures; None: no pictures

    @classmethod
    def create(cls, plan: QualityPlan, data: BenchmarkData, weights: BaseWeights,
               comparisons: Path | None = None) -> BenchmarkContext:
        classes = list(data.pool.class_names)
        base = new_adapter_model(weights, plan.image_size, classes, adapter_config("decoder"))
        base.to(resolve_device(plan.device))
        predictor = Predictor(base, precision=plan.precision)
        start = time.monotonic()
        held_out = predictor.embed([s.image for s in data.held_out.samples], batch_size=1)
        seconds = (time.monotonic() - start) / max(1, len(held_out))
        train_embeddings = TrainingEmbeddings(base, None, plan.precision)
        return cls(plan, data, weights, base, train_embeddings, held_out, seconds, comparisons)

    def train_set(self, labeled: int, repeat: int) -> SegmentationDataset:
        return self.data.pool.subset(draw_order(len(self.data.pool), repeat, self.plan.seed)[:labeled])

    def train_config(self, repeat: int) -> TrainConfig:
        # A step budget with a wall-clock cap; no plateau stop, so every method gets the same steps
        # unless the clock ends it first (then ``stopped_because`` says so in the cell).
        plan = self.plan
        return TrainConfig(max_steps=plan.steps, max_seconds=plan.budget_seconds, batch_size=plan.batch_size,
                           patience=plan.steps, precision=plan.precision, seed=plan.seed + repeat,
                           warmup_steps=min(10, plan.steps))

    def picture_folder(self, key: CellKey) -> Path | None:
        """Where ``key``'s cell draws its pictures: adapter methods at the largest labeled count the pool
        allows, first repeat (the best-trained adapter of a curve); None for every other cell."""
        usable = [n for n in self.plan.labeled if n <= len(self.data.pool)]
        if self.comparisons is None or key.method in ("sam", "promptless") or key.repeat != 0:
            return None
        return self.comparisons / key.name if usable and key.labeled == max(usable) else None

    def write_pictures(self, model: SamAdapter, embeddings: list[ImageEmbedding], folder: Path) -> list[str]:
        """[image | truth | SAM's decoder | ``model``'s] for the first held-out tasks; the files' names.

        SAM's panel is always the base model's own decoder on the base embeddings, whatever the method's
        encoder, so every method's pictures face the same reference as the ``sam`` cell."""
        tasks = picture_tasks(self.data.held_out, PICTURE_TASKS)
        precision = self.plan.precision
        sam = ClickDecoder("SAM", Predictor(self.base, precision=precision, clicks="base"),
                           [self.held_out_embeddings[i] for i in tasks], False)
        adapter = ClickDecoder("adapter", Predictor(model, precision=precision), [embeddings[i] for i in tasks], True)
        written = write_comparisons(self.data.held_out.subset(tasks), adapter, sam, folder, DEFAULT_PICTURE_CLICKS)
        return [c.path.name for c in written]


def _clicks(ctx: BenchmarkContext, model: SamAdapter, decoder: str, embeddings: list[ImageEmbedding]) -> dict:
    predictor = Predictor(model, precision=ctx.plan.precision, clicks=decoder)
    return evaluate_clicks(predictor, ctx.data.held_out, max_clicks=ctx.plan.max_clicks,
                           class_prompts=decoder == "adapter", embeddings=embeddings)


def sam_cell(ctx: BenchmarkContext) -> dict[str, Any]:
    """SAM's own decoder on clicks (no class prompts): the reference every adapter's clicks face."""
    return {"method": "sam", "labeled": 0, "repeat": 0, "masks": None,
            "clicks": _clicks(ctx, ctx.base, "base", ctx.held_out_embeddings)}


def _adapter_cell(ctx: BenchmarkContext, method: str, train_set: SegmentationDataset, config: TrainConfig,
                  pictures: Path | None = None) -> dict[str, Any]:
    plan = ctx.plan
    model = new_adapter_model(ctx.weights, plan.image_size, list(train_set.class_names), adapter_config(method))
    model.to(ctx.base.device)
    frozen = model.config.keeps_base_embeddings
    with PeakMemory() as memory:
        result = train_adapter(model, train_set, config, embeddings=ctx.train_embeddings if frozen else None)
    if frozen:
        embeddings = ctx.held_out_embeddings
    else:
        embeddings = Predictor(model, precision=plan.precision).embed([s.image for s in ctx.data.held_out.samples],
                                                                      batch_size=1)
    cell = {"train": result.to_dict(), "memory": memory.to_dict(),
            "trainable_parameters": model.trainable_parameter_count(),
            "masks": evaluate(model, ctx.data.held_out, plan.precision, embeddings=embeddings),
            "clicks": _clicks(ctx, model, "adapter", embeddings)}
    if pictures is not None:
        cell["pictures"] = ctx.write_pictures(model, embeddings, pictures)
    return cell


def _promptless_cell(ctx: BenchmarkContext, train_set: SegmentationDataset, config: TrainConfig) -> dict[str, Any]:
    with PeakMemory() as memory:
        head, result = train_head(ctx.base, train_set, config, ctx.train_embeddings)
    maps = [label_map(head, ctx.base, e) for e in ctx.held_out_embeddings]
    return {"train": result.to_dict(), "memory": memory.to_dict(),
            "trainable_parameters": sum(p.numel() for p in head.parameters()),
            "masks": score_label_maps(maps, ctx.data.held_out), "clicks": None}


def computed_on(device: torch.device) -> dict[str, Any]:
    """Where and when a cell was computed: a resumed run may compute its cells on another day."""
    machine = describe()
    keys = ("cpu_model", "usable_cores", "torch_threads", "git_commit", "git_dirty")
    return {**{k: machine[k] for k in keys}, "device": str(device), "load_average": load_average(),
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def run_cell(ctx: BenchmarkContext, key: CellKey) -> dict[str, Any]:
    """Train ``key.method`` on ``key.labeled`` images of draw ``key.repeat`` and score it (JSON-safe)."""
    if key.method == "sam":
        return {**sam_cell(ctx), "computed_on": computed_on(ctx.base.device)}
    train_set = ctx.train_set(key.labeled, key.repeat)
    config = ctx.train_config(key.repeat)
    start = time.monotonic()
    if key.method == "promptless":
        cell = _promptless_cell(ctx, train_set, config)
    else:
        cell = _adapter_cell(ctx, key.method, train_set, config, ctx.picture_folder(key))
    frozen = key.method in ("decoder", "promptless")
    # Frozen-encoder methods train on stored embeddings: each new image (and its mirror) is encoded
    # once, outside the training loop; count that cost here so the methods compare fairly.
    encode = 2 * len(train_set) * ctx.encode_seconds_per_image if frozen else 0.0
    cell.update(method=key.method, labeled=key.labeled, repeat=key.repeat,
                images=[s.name for s in train_set.samples], encode_seconds=round(encode, 2),
                train_seconds=round(cell["train"]["seconds"] + encode, 2),
                cell_seconds=round(time.monotonic() - start, 1), computed_on=computed_on(ctx.base.device))
    log.info("%s: mIoU %.3f, NoC@90 %s, %.1f s", key.name, cell["masks"]["mean_iou"],
             None if cell["clicks"] is None else round(cell["clicks"]["noc90"], 2), cell["train_seconds"])
    return cell
