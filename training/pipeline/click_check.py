"""The click gate of a run: simulated clicks on a bounded, stable sample of held-out objects.

The rule is ``training.learn.click_gate``'s (the adapter's decoder answers clicks only when
``training.learn.clicks.compare`` finds it better than SAM's on the same objects), on at most
``max_objects`` objects: held-out tasks in a stable hash order, each task's classes in class order. The
same objects are clicked run after run while the held-out set holds them.

SAM's own decoder never changes, so its trace of an object is computed once and carried from version to
version in the metadata (``base_traces``), keyed by task and class and valid while the task's annotation
stamp, the base model, the click budget and the click rule (``CLICK_PROTOCOL``) are the same. Only the
candidate's decoder is clicked every run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from training.inference.predictor import ImageEmbedding, Predictor
from training.labelstudio.task_cache import TaskCache
from training.learn.clicks import (
    CLICK_PROTOCOL,
    DEFAULT_MIN_AREA,
    ObjectTrace,
    compare,
    decoder_for,
    simulate_object,
    summarize,
)
from training.model.adapter import SamAdapter

__all__ = ["ClickObject", "click_objects", "gate_clicks", "unchecked_clicks"]

EmbeddingOf = Callable[[int], ImageEmbedding]

# The verdict needs NoC@90 and, for ties, IoU after one click: an object's clicks stop once it reaches 0.90
# (more would only fill in a report), which is what makes a good decoder's check cheap.
GATE_REPORT_CLICKS = (1,)


@dataclass(frozen=True)
class ClickObject:
    task_id: int
    class_name: str
    stamp: str

    @property
    def key(self) -> str:
        return f"{self.task_id}:{self.class_name}"


def _order(task_id: int) -> bytes:
    return hashlib.blake2b(f"clicks:{task_id}".encode(), digest_size=8).digest()


def click_objects(cache: TaskCache, holdout: Sequence[int], max_objects: int) -> list[ClickObject]:
    """Up to ``max_objects`` held-out objects (one per task and present class), in a stable order."""
    objects: list[ClickObject] = []
    for task_id in sorted(holdout, key=_order):
        entry = cache.tasks[task_id]
        for name in cache.class_names:
            if name in entry.classes and len(objects) < max_objects:
                objects.append(ClickObject(task_id, name, entry.stamp))
    return objects


def _trace(predictor: Predictor, embedding: ImageEmbedding, truth: np.ndarray, class_name: str | None,
           max_clicks: int) -> ObjectTrace:
    return simulate_object(decoder_for(predictor, embedding, class_name), truth, max_clicks, GATE_REPORT_CLICKS)


def _base_trace(cached: dict, obj: ClickObject) -> ObjectTrace | None:
    found = cached.get(obj.key)
    if found is None or found.get("stamp") != obj.stamp:
        return None
    return ObjectTrace([], [float(v) for v in found["ious"]])


def gate_clicks(model: SamAdapter, cache: TaskCache, objects: Sequence[ClickObject], embedding_of: EmbeddingOf,
                precision: str, max_clicks: int, base_traces: dict) -> tuple[dict, dict]:
    """Choose the decoder for clicks. Returns (verdict as ``training.learn.click_gate``, base traces to keep).

    ``base_traces``: ``{"base": base model id, "max_clicks": m, "protocol": click rule, "objects": {key:
    {"stamp", "ious"}}}`` from the previous version, reused where it fits.
    """
    base_id = model.base.to_dict()
    kept = {"base": base_id, "max_clicks": max_clicks, "protocol": CLICK_PROTOCOL}
    reusable = base_traces.get("objects", {}) if all(base_traces.get(k) == v for k, v in kept.items()) else {}
    kept["objects"] = {}
    if model.base_mask_decoder is not None and not objects:
        return ({"decoder": "base", "reason": "no held-out objects to compare clicks on: SAM's decoder keeps them",
                 "candidate": None, "base": None, "computed_base": 0}, kept)
    adapter = Predictor(model, precision=precision, clicks="adapter")
    base = Predictor(model, precision=precision, clicks="base") if model.base_mask_decoder is not None else None
    candidate_traces, base_list, computed = [], [], 0
    masks_by_task: dict[int, np.ndarray] = {}
    for obj in objects:
        if obj.task_id not in masks_by_task:
            masks_by_task[obj.task_id] = cache.masks(obj.task_id)
        truth = masks_by_task[obj.task_id][cache.class_names.index(obj.class_name)]
        if int(truth.sum()) < DEFAULT_MIN_AREA:  # a few stray pixels are nothing an annotator clicks on
            continue
        embedding = embedding_of(obj.task_id)
        candidate_traces.append(_trace(adapter, embedding, truth, obj.class_name, max_clicks))
        if base is None:
            continue
        trace = _base_trace(reusable, obj)
        if trace is None:
            trace, computed = _trace(base, embedding, truth, None, max_clicks), computed + 1
        base_list.append(trace)
        kept["objects"][obj.key] = {"stamp": obj.stamp, "ious": [round(v, 6) for v in trace.ious]}
    return _verdict(candidate_traces, base_list if base is not None else None, max_clicks, computed), kept


def unchecked_clicks(model: SamAdapter, reason: str, base_traces: dict) -> tuple[dict, dict]:
    """The verdict of a run that does not click (its candidate is not promoted, so it serves no clicks): SAM's
    decoder answers them should an admin activate it (an adapter with its own encoder has only its own), and
    SAM's traces are carried on unchanged."""
    decoder = "base" if model.base_mask_decoder is not None else "adapter"
    return ({"decoder": decoder, "reason": reason, "candidate": None, "base": None, "computed_base": 0},
            base_traces)


def _verdict(candidate_traces: list[ObjectTrace], base_traces: list[ObjectTrace] | None, max_clicks: int,
             computed: int) -> dict:
    candidate = {**summarize(candidate_traces, GATE_REPORT_CLICKS), "max_clicks": max_clicks}
    if base_traces is None:
        return {"decoder": "adapter", "reason": "the adapter has its own encoder: its decoder answers clicks",
                "candidate": candidate, "base": None, "computed_base": 0}
    base = {**summarize(base_traces, GATE_REPORT_CLICKS), "max_clicks": max_clicks}
    better = candidate["objects"] > 0 and compare(candidate, base)
    reason = (f"simulated clicks on {candidate['objects']} held-out objects: NoC@90 {candidate['noc90']} "
              f"(adapter) vs {base['noc90']} (SAM)")
    return {"decoder": "adapter" if better else "base", "reason": reason, "candidate": candidate, "base": base,
            "computed_base": computed}

