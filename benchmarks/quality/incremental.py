"""Incremental runs against one full run: ``python -m benchmarks quality --incremental``.

Issue 21 made training runs incremental (a warm start from the active adapter, a fixed step budget, the
tasks new since that version in half of every batch). This mode checks that quality does not pay for the
speed. Per repeat (one draw of the labeled images, as in the other modes):

- an in-process Label Studio stand-in (``testkit.fake_label_studio``) holds one project whose tasks are
  the draw's images, unlabeled at first;
- incremental arm: the annotations arrive one at a time, and after each one ``run_project`` runs as the
  worker would (warm start, incremental plan; the first run has nothing to start from and is full), into
  one local registry;
- full arm: at each recorded count n (4, 8, 16 by default), one ``run_project(full=True)`` over the same n
  labeled tasks, into a fresh registry and data directory;
- both arms' active adapters are scored on the benchmark's own held-out set (the same for every arm,
  count and repeat) with the other modes' scoring: promptless masks (``evaluate``) and simulated clicks
  (``evaluate_clicks``, the adapter's decoder asked with the object's class).

The runs hold nothing out themselves (``holdout_cap=0``): the pipeline's held-out rule would take one
labeled task in five out of training, and which ones depends on the order tasks arrive in, so the two
arms would train on different tasks. With nothing held out every run is promoted, and each arm's active
adapter is the one its last run trained. Everything else is ``JobSettings``' defaults (the decoder kind,
24 incremental steps, ``new_share`` 0.5, the full run's ``step_budget``) unless ``job`` overrides it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks.machine import describe
from benchmarks.quality.cells import CellKey, CellStore
from benchmarks.quality.data import BenchmarkData, draw_order
from benchmarks.quality.methods import BenchmarkContext, computed_on
from benchmarks.quality.plan import QualityPlan
from benchmarks.quality.runner import base_weights, benchmark_data
from testkit.fake_label_studio import FakeLabelStudio
from testkit.ls_annotations import brush_region, png_bytes
from training.data.dataset import Sample
from training.inference.predictor import Predictor
from training.learn.clicks import DEFAULT_REPORT_CLICKS, evaluate_clicks
from training.learn.evaluation import evaluate
from training.learn.trainer import TrainProgress
from training.model.loading import load_adapter_model
from training.model.weights import BaseWeights
from training.pipeline.models import BaseModels
from training.pipeline.run import RunServices, run_project
from training.pipeline.settings import JobSettings
from training.registry import AdapterRegistry, open_registry

__all__ = ["ARMS", "INCREMENTAL_VERSION", "IncrementalContext", "incremental_plan", "run_incremental", "run_repeat"]

log = logging.getLogger(__name__)

ARMS = ("incremental", "full")
PROJECT = 21  # the stand-in's project id; any id works, each repeat has its own stand-in
# Bump when the driving or the scoring here changes: cells of older code are then recomputed.
INCREMENTAL_VERSION = 1


def incremental_plan(**overrides: Any) -> QualityPlan:
    """The mode's defaults: 4, 8 and 16 labeled images, 3 repeats, the other modes' data and base."""
    return QualityPlan(**{"mode": "incremental", "labeled": [4, 8, 16], "methods": ["decoder"], **overrides})


class _QuietProgress:
    """A run's stages go to the debug log: 16 runs a repeat would otherwise fill the console."""

    def stage(self, stage: str, message: str, **fields: Any) -> None:
        log.debug("%s: %s", stage, message)

    def on_train(self, progress: TrainProgress) -> None:
        pass


@dataclass
class IncrementalContext:
    """What every repeat shares: the plan, the scoring context (data, base, held-out embeddings), the
    JobSettings overrides, and the base models kept between runs as a worker keeps them."""

    bench: BenchmarkContext
    job: dict[str, Any]
    models: BaseModels

    @property
    def plan(self) -> QualityPlan:
        return self.bench.plan

    @property
    def data(self) -> BenchmarkData:
        return self.bench.data

    @property
    def weights(self) -> BaseWeights:
        return self.bench.weights

    def settings(self, ls: FakeLabelStudio, work: Path, repeat: int) -> JobSettings:
        """Job settings for one arm's runs, with its own data directory and registry under ``work``."""
        plan = self.plan
        checkpoint = "random" if self.weights.path is None else str(self.weights.path)
        values = {"label_studio_url": ls.url, "label_studio_api_key": ls.legacy_token, "model_type": plan.model,
                  "checkpoint": checkpoint, "image_size": plan.image_size, "data_dir": str(work / "data"),
                  "registry": str(work / "adapters"), "device": plan.device, "precision": plan.precision,
                  "holdout_cap": 0, "click_objects": 0, "ls_retries": 0, "train_max_seconds": 3600.0,
                  "train_options": {"seed": plan.seed + repeat}}
        return JobSettings.from_dict({**values, **self.job})


def cell_fingerprint(plan: QualityPlan, job: dict[str, Any], data_digest: str, base_digest: str) -> str:
    """The plan's fingerprint plus what only this mode's cells depend on."""
    settings = {"plan": plan.fingerprint(data_digest, base_digest), "job": job, "labeled": plan.labeled,
                "version": INCREMENTAL_VERSION}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def label_config(classes: list[str]) -> str:
    labels = "".join(f'<Label value="{name}"/>' for name in classes)
    return (f'<View><Image name="image" value="$image"/>'
            f'<BrushLabels name="tag" toName="image">{labels}</BrushLabels></View>')


def _annotation(sample: Sample, classes: list[str]) -> list[dict]:
    """What an annotator submits for ``sample``: one brush region per class present."""
    result = [brush_region(sample.masks[k], name) for k, name in enumerate(classes) if sample.masks[k].any()]
    return [{"result": result}]


def score_active(ctx: IncrementalContext, registry: AdapterRegistry) -> dict[str, Any]:
    """The project's active adapter on the benchmark's held-out set, with what its version recorded."""
    plan, held_out = ctx.plan, ctx.data.held_out
    info, artifact = registry.load(str(PROJECT), registry.active_version(str(PROJECT)))
    model = load_adapter_model(artifact, ctx.weights, plan.image_size, sam=ctx.models.sam(ctx.weights, plan.image_size))
    model.to(ctx.bench.base.device)
    # A frozen encoder is the base's: the held-out embeddings computed once serve every version.
    embeddings = ctx.bench.held_out_embeddings if model.config.keeps_base_embeddings else None
    masks = evaluate(model, held_out, plan.precision, embeddings=embeddings)
    clicks = evaluate_clicks(Predictor(model, precision=plan.precision, clicks="adapter"), held_out,
                             max_clicks=plan.max_clicks, class_prompts=True, embeddings=embeddings,
                             report_clicks=[c for c in DEFAULT_REPORT_CLICKS if c <= plan.max_clicks])
    return {"version": info.version, "plan": info.metadata.get("plan"), "masks": masks, "clicks": clicks}


def _run(ctx: IncrementalContext, settings: JobSettings, full: bool) -> dict[str, Any]:
    """One ``run_project`` as the worker calls it; what the cell keeps of its outcome."""
    registry = open_registry(settings.registry)
    started = time.monotonic()
    outcome = run_project(str(PROJECT), settings, RunServices(registry, _QuietProgress(), ctx.models, full=full))
    if outcome["status"] not in ("promoted", "not_promoted"):
        raise RuntimeError(f"run ended {outcome['status']}: {outcome.get('reason')}")
    return {"status": outcome["status"], "version": outcome["version"], "plan": outcome["plan"],
            "steps": outcome["train"]["steps"], "train_seconds": round(outcome["train"]["seconds"], 2),
            "seconds": round(time.monotonic() - started, 2)}


def _full_point(ctx: IncrementalContext, ls: FakeLabelStudio, work: Path, repeat: int, labeled: int
                ) -> dict[str, Any]:
    """One full run over the ``labeled`` tasks labeled so far, into a fresh registry, and its score."""
    settings = ctx.settings(ls, work / f"full-{labeled}", repeat)
    run = _run(ctx, settings, full=True)
    return {**score_active(ctx, open_registry(settings.registry)), "runs": [run]}


def run_repeat(ctx: IncrementalContext, repeat: int, work_dir: Path | None = None) -> dict[str, Any]:
    """Both arms over repeat ``repeat``'s draw: labels arrive one at a time up to the largest count.

    Returns ``{"repeat", "images", "points": {arm: {n: score}}, "incremental_runs": [...], ...}`` (JSON-safe).
    """
    plan, pool = ctx.plan, ctx.data.pool
    classes = list(pool.class_names)
    order = draw_order(len(pool), repeat, plan.seed)[: max(plan.labeled)]
    points: dict[str, dict[str, Any]] = {arm: {} for arm in ARMS}
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    with FakeLabelStudio() as ls, tempfile.TemporaryDirectory(dir=work_dir) as scratch:
        work = Path(scratch)
        ls.add_project(PROJECT, label_config(classes))
        samples = [pool.samples[i] for i in order]
        tasks = [ls.add_task(PROJECT, {"image": ls.add_image(PROJECT, f"{s.name}.png", png_bytes(s.image))})
                 for s in samples]
        settings = ctx.settings(ls, work / "incremental", repeat)
        registry = open_registry(settings.registry)
        for count, (task, sample) in enumerate(zip(tasks, samples, strict=True), start=1):
            ls.set_annotations(task, _annotation(sample, classes))  # an annotator submits task ``count``
            runs.append(_run(ctx, settings, full=False))
            if count in plan.labeled:
                points["incremental"][str(count)] = score_active(ctx, registry)
                points["full"][str(count)] = _full_point(ctx, ls, work, repeat, count)
                log.info("repeat %d, %d labeled: mIoU incremental %.3f, full %.3f", repeat, count,
                         points["incremental"][str(count)]["masks"]["mean_iou"],
                         points["full"][str(count)]["masks"]["mean_iou"])
    return {"method": "incremental", "repeat": repeat, "images": [s.name for s in samples], "points": points,
            "incremental_runs": runs, "cell_seconds": round(time.monotonic() - started, 1),
            "computed_on": computed_on(ctx.bench.base.device)}


def run_incremental(plan: QualityPlan, job: dict[str, Any], cells_dir: Path, progress: bool = True
                    ) -> dict[str, Any]:
    """Every repeat of ``plan`` (finished ones loaded from ``cells_dir``) and the run's description.

    ``job``: JobSettings overrides for every run (e.g. ``incremental_steps``); checked before anything runs.
    """
    plan.check()
    JobSettings.from_dict({"image_size": plan.image_size, **job})  # a bad override fails now, not after a build
    machine = describe()
    weights, base = base_weights(plan)
    data = benchmark_data(plan)
    if max(plan.labeled) > len(data.pool):
        raise ValueError(f"labeled counts up to {max(plan.labeled)} need as many pool images; there are "
                         f"{len(data.pool)}")
    store = CellStore(cells_dir, cell_fingerprint(plan, job, data.fingerprint(), weights.sha256))
    cells, reused, ctx = [], 0, None
    started = time.monotonic()
    for repeat in tqdm(range(plan.repeats), desc="incremental repeats", unit="repeat", file=sys.stderr,
                       disable=not progress):
        key = CellKey("incremental", max(plan.labeled), repeat)
        cell = store.load(key)
        if cell is None:
            # Models and embeddings only when a repeat is left to compute: a finished run reloads fast.
            ctx = ctx or IncrementalContext(BenchmarkContext.create(plan, data, weights), job, BaseModels())
            cell = store.save(key, run_repeat(ctx, repeat))
        else:
            reused += 1
        cells.append(cell)
    defaults = JobSettings()
    return {"plan": plan.to_dict(), "job": job, "machine": machine, "base": base, "data": data.describe(),
            "fingerprint": store.fingerprint, "cells": cells, "reused_cells": reused,
            "computed_cells": plan.repeats - reused, "seconds": round(time.monotonic() - started, 1),
            "settings": {name: job.get(name, getattr(defaults, name)) for name in
                         ("adapter_kind", "incremental_steps", "new_share", "steps_per_image", "min_steps",
                          "max_steps", "batch_size")}}
