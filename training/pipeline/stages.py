"""The pieces of a run: the models it starts from, the step plan, held-out scoring and publishing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from training.inference.predictor import ImageEmbedding, Predictor
from training.labelstudio.task_cache import TaskCache
from training.learn.embeddings import TrainingEmbeddings
from training.learn.trainer import TrainProgress
from training.model.adapter import SamAdapter
from training.model.artifact import AdapterMismatchError
from training.model.config import AdapterConfig
from training.model.loading import load_adapter_model, new_adapter_model
from training.model.weights import BaseWeights
from training.pipeline.history import History
from training.pipeline.models import BaseModels
from training.pipeline.scores import TaskScore, score_prediction
from training.pipeline.settings import JobSettings, step_budget
from training.pipeline.training_set import MixedSampler
from training.registry import AdapterRegistry

__all__ = ["Progress", "StepPlan", "initial_model", "load_active", "plan_steps", "score_tasks"]

log = logging.getLogger(__name__)


class Progress(Protocol):
    """Where a run reports its stages (``training.jobs.progress.JobProgress`` in the worker)."""

    def stage(self, stage: str, message: str, **fields: Any) -> None: ...

    def on_train(self, progress: TrainProgress) -> None: ...


def load_active(registry: AdapterRegistry, project: str, weights: BaseWeights, image_size: int,
                models: BaseModels) -> tuple[int | None, SamAdapter | None, str]:
    """The project's active adapter rebuilt on this base: (version, model or None, what happened).

    The model is None when there is no active version or it was trained on another base model
    (other checkpoint or image size): the backend cannot use it either, so it is not compared.
    """
    info = registry.active(project)
    if info is None:
        return None, None, "no active adapter yet"
    info, data = registry.load(project, info.version)
    try:
        model = load_adapter_model(data, weights, image_size, sam=models.sam(weights, image_size))
        return info.version, model, f"active version {info.version}"
    except AdapterMismatchError as exc:
        return info.version, None, f"active version {info.version} does not fit this base model ({exc})"


def initial_model(active: SamAdapter | None, active_version: int | None, weights: BaseWeights,
                  settings: JobSettings, class_names: list[str], models: BaseModels, full: bool
                  ) -> tuple[SamAdapter, bool, str]:
    """The model to train: the active adapter itself when its configuration is the one wanted and no full
    retrain was asked for (warm start; new classes get fresh prompts), else a fresh adapter.

    Returns (model with ``class_names``, warm-started?, why).
    """
    wanted = AdapterConfig.for_kind(settings.adapter_kind, **settings.adapter_options)
    # Without explicit options any adapter of the wanted kind warm-starts; a change of kind starts afresh.
    same = active is not None and (active.config == wanted or (not settings.adapter_options
                                                               and active.config.kind == wanted.kind))
    if same and not full:
        new = [n for n in class_names if n not in active.class_names]
        active.set_classes(class_names)
        return active, True, f"warm start from version {active_version}" + (f", new classes {new}" if new else "")
    if full and active is not None:
        why = "a full retrain was asked for"
    elif active is None:
        why = "no usable active adapter"
    else:
        why = f"the adapter configuration changed ({wanted.kind} kind)"
    model = new_adapter_model(weights, settings.image_size, class_names, wanted,
                              sam=models.sam(weights, settings.image_size))
    return model, False, f"{why}: training from scratch"


@dataclass
class StepPlan:
    """How a run trains: ``kind`` "incremental" (warm start, fixed budget, new tasks first) or "full"."""

    kind: str
    steps: int
    warmup: int
    sampler: MixedSampler
    new: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "steps": self.steps, "warmup": self.warmup, "new_tasks": len(self.new)}


def plan_steps(train_ids: list[int], new_ids: list[int], warm: bool, history: History, settings: JobSettings,
               warmup: int) -> StepPlan:
    """The step budget and batch mix; ``train_ids`` index order is the training set's.

    Incremental when the run warm-starts from an active version that recorded its data: the budget is
    ``incremental_steps`` whatever the project's size, and every batch gives ``new_share`` of its places to
    the new or changed tasks. Otherwise a full run: the budget grows with the data (``step_budget``) and
    batches draw every training task alike.
    """
    position = {task: i for i, task in enumerate(train_ids)}
    new_ids = [t for t in new_ids if t in position]  # new tasks that were held out are not trained on
    fresh = [position[t] for t in new_ids]
    if warm and history.knows_its_data:
        chosen = set(fresh)
        replay = [i for i in range(len(train_ids)) if i not in chosen]
        steps = settings.incremental_steps
        return StepPlan("incremental", steps, min(warmup, max(1, steps // 4)),
                        MixedSampler(fresh, replay, settings.new_share), new_ids)
    steps = step_budget(len(train_ids), settings)
    return StepPlan("full", steps, warmup, MixedSampler(list(range(len(train_ids))), [], 1.0), new_ids)


EmbeddingOf = Callable[[int], ImageEmbedding]


def embedding_source(cache: TaskCache, embeddings: TrainingEmbeddings | None, model: SamAdapter,
                     precision: str) -> EmbeddingOf:
    """task id -> its embedding: the shared store's for a frozen encoder, else this model's encoder."""
    if embeddings is not None:
        return lambda task: embeddings.get_by_digest(cache.tasks[task].digest, lambda: cache.image(task))
    predictor = Predictor(model, precision=precision)
    return lambda task: predictor.embed([cache.image(task)], batch_size=1)[0]


def score_tasks(model: SamAdapter, cache: TaskCache, task_ids: list[int], embedding_of: EmbeddingOf,
                precision: str) -> dict[int, TaskScore]:
    """Promptless masks of ``model`` on each task, scored against its cached masks."""
    predictor = Predictor(model, precision=precision)
    classes = cache.class_names
    known = [c for c in classes if c in model.class_names]
    scores = {}
    for task in task_ids:
        prediction = predictor.predict_classes(embedding_of(task), known)
        scores[task] = score_prediction(prediction, cache.masks(task), classes,
                                        cache.tasks[task].stamp)
    return scores
