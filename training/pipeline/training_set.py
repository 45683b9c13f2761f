"""Training data straight from the task cache, and the batch mix of an incremental run.

``CachedTrainingSet`` prepares a sample from its cached masks and its stored embedding, looked up by the
image digest the export recorded: no image is decoded unless the embedding store lacks it. Samples are
prepared only when a batch first draws them, so a run touches at most steps x batch tasks.

``MixedSampler``: every batch gives a fixed share of its places to the tasks that are new or changed
since the active version was trained, the rest to tasks drawn from the earlier ones (replay), each pool
in shuffled rounds. A run's cost is then its step budget, whatever the project's size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from training.labelstudio.task_cache import TaskCache
from training.learn.embeddings import TrainingEmbeddings
from training.learn.trainer import PreparedSample, prepare_targets
from training.model.adapter import SamAdapter

__all__ = ["CachedTrainingSet", "MixedSampler"]


class CachedTrainingSet:
    """The cached tasks ``task_ids`` (in that order) as a ``training.learn.trainer.PreparedSource``."""

    def __init__(self, cache: TaskCache, task_ids: Sequence[int]) -> None:
        self.cache = cache
        self.task_ids = list(task_ids)
        self.class_names = list(cache.class_names)

    def __len__(self) -> int:
        return len(self.task_ids)

    def prepare(self, index: int, model: SamAdapter, embeddings: TrainingEmbeddings) -> PreparedSample:
        task_id = self.task_ids[index]
        entry = self.cache.tasks[task_id]
        targets, valid = prepare_targets(model, self.cache.masks(task_id))
        embedding = embeddings.get_by_digest(entry.digest, lambda: self.cache.image(task_id))
        return PreparedSample(None, targets, valid, embedding.features.to(model.device))


class _Rounds:
    """Indices drawn in shuffled rounds (each index once per round)."""

    def __init__(self, indices: Sequence[int]) -> None:
        self.indices = list(indices)
        self.order: list[int] = []

    def draw(self, rng: np.random.Generator) -> int:
        if not self.order:
            self.order = [self.indices[int(i)] for i in rng.permutation(len(self.indices))]
        return self.order.pop()


class MixedSampler:
    """Batches with ``ceil(share x batch)`` places for ``new`` indices and the rest for ``replay`` ones.

    With one pool empty the other fills the batch. ``share`` in (0, 1].
    """

    def __init__(self, new: Sequence[int], replay: Sequence[int], share: float) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"the new tasks' share of a batch must be in (0, 1], got {share!r}")
        if not new and not replay:
            raise ValueError("nothing to sample: no new and no earlier tasks")
        self.new, self.replay, self.share = _Rounds(new), _Rounds(replay), share

    def __call__(self, rng: np.random.Generator, batch_size: int) -> list[int]:
        fresh = math.ceil(self.share * batch_size) if self.new.indices else 0
        if not self.replay.indices:
            fresh = batch_size
        return [self.new.draw(rng) for _ in range(fresh)] + [self.replay.draw(rng) for _ in range(batch_size - fresh)]
