"""Run a quality plan: base weights, data, every missing cell (a tqdm bar over them), the summary."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from benchmarks.machine import describe
from benchmarks.quality.cells import CellKey, CellStore
from benchmarks.quality.data import SYNTHETIC_FAMILIES, BenchmarkData, load_data, split_user_data, synthetic_data
from benchmarks.quality.methods import METHOD_LABELS, BenchmarkContext, run_cell
from benchmarks.quality.plan import QualityPlan
from testkit.standin import build_standin, standin_report
from training.model.weights import BaseWeights, resolve_checkpoint

log = logging.getLogger(__name__)


def base_weights(plan: QualityPlan) -> tuple[BaseWeights, dict[str, Any]]:
    """The plan's base weights and a description; no checkpoint: the stand-in, built once if needed."""
    if plan.checkpoint is not None:
        weights = resolve_checkpoint(plan.model, plan.checkpoint)
        return weights, {"kind": "random" if weights.is_random else "checkpoint", "checkpoint": plan.checkpoint,
                         "sha256": weights.sha256}
    started = time.monotonic()
    path = build_standin(plan.cache / "standin", **plan.standin)
    report = standin_report(path)
    log.info("stand-in %s ready after %.0f s", path.name, time.monotonic() - started)
    weights = resolve_checkpoint(plan.model, str(path))
    return weights, {"kind": "standin", "checkpoint": path.name, "sha256": weights.sha256,
                     "recipe": report["recipe"], "build_seconds": report["seconds"],
                     "pretrain_held_out_mean_iou": report["held_out_mean_iou"],
                     "own_clicks": report.get("clicks", {}).get("own")}


def benchmark_data(plan: QualityPlan) -> BenchmarkData:
    if plan.data is None or str(plan.data) in SYNTHETIC_FAMILIES:
        family = str(plan.data or SYNTHETIC_FAMILIES[0])
        return synthetic_data(max(plan.pool_images, max(plan.labeled)), plan.held_out, plan.image_size, family)
    dataset = load_data(plan.data, plan.images, plan.label_config)
    return split_user_data(dataset, plan.held_out, str(plan.data))


def plan_cells(plan: QualityPlan, pool_size: int) -> tuple[list[CellKey], list[int]]:
    """SAM's reference cell, then every (method, n) per repeat (repeat-major: an interrupted run has
    whole curves of fewer repeats); labeled counts above the pool size are left out (returned)."""
    usable = [n for n in plan.labeled if n <= pool_size]
    keys = [CellKey("sam", 0, 0)]
    keys += [CellKey(m, n, r) for r in range(plan.repeats) for n in usable for m in plan.methods]
    return keys, [n for n in plan.labeled if n > pool_size]


def run_plan(plan: QualityPlan, cells_dir: Path, progress: bool = True, comparisons: Path | None = None
             ) -> dict[str, Any]:
    """Every cell of ``plan`` (finished ones loaded from ``cells_dir``) and the run's description.

    ``comparisons``: the folder for the click pictures the largest-count cells draw when computed
    (``BenchmarkContext.picture_folder``); None draws none."""
    plan.check()
    machine = describe()
    weights, base = base_weights(plan)
    data = benchmark_data(plan)
    store = CellStore(cells_dir, plan.fingerprint(data.fingerprint(), weights.sha256))
    keys, too_many = plan_cells(plan, len(data.pool))
    if too_many:
        log.warning("labeled counts %s exceed the pool of %d images: left out", too_many, len(data.pool))
    cells, reused, context = [], 0, None
    started = time.monotonic()
    bar = tqdm(keys, desc="quality cells", unit="cell", file=sys.stderr, disable=not progress)
    for key in bar:
        bar.set_postfix_str(key.name)
        cell = store.load(key)
        if cell is not None:
            reused += 1
        else:
            # Embeddings and models only when something is left to compute: a finished run reloads fast.
            context = context or BenchmarkContext.create(plan, data, weights, comparisons)
            cell = store.save(key, run_cell(context, key))
        cells.append(cell)
    return {"plan": plan.to_dict(), "machine": machine, "base": base, "data": data.describe(),
            "methods": {m: METHOD_LABELS[m] for m in ["sam", *plan.methods]}, "fingerprint": store.fingerprint,
            "left_out_labeled": too_many, "cells": cells, "reused_cells": reused,
            "computed_cells": len(keys) - reused, "seconds": round(time.monotonic() - started, 1),
            "encode_seconds_per_image": None if context is None else round(context.encode_seconds_per_image, 3)}
