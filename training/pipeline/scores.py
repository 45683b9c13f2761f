"""Held-out mask scores kept per task, so a version is scored once and compared on the same tasks.

A task's score is its pixel counts per class (intersection, predicted, true) under one annotation
(its ``stamp``). Dataset-level IoU sums the counts over tasks before dividing, as
``training.learn.evaluation`` does, so any set of tasks can be scored from stored counts alone.

Noise: the comparison between two versions is paired (the same tasks, the same masks). Its noise is
the standard deviation of the mean-IoU difference over bootstrap resamples of the held-out tasks
(fixed seed, 200 resamples): how much the verdict could move had other tasks been held out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from training.inference.predictor import ClassPrediction

__all__ = ["MaskGate", "TaskScore", "bootstrap_noise", "mean_iou", "score_prediction", "summarize_scores"]

BOOTSTRAP_RESAMPLES = 200


@dataclass(frozen=True)
class TaskScore:
    """One task's counts under the annotation named by ``stamp``: class -> (intersection, predicted, true)."""

    stamp: str
    counts: dict[str, tuple[int, int, int]]

    def to_dict(self) -> dict:
        return {"stamp": self.stamp, "counts": {k: list(v) for k, v in self.counts.items()}}

    @classmethod
    def from_dict(cls, data: Mapping) -> TaskScore:
        counts = {str(k): (int(v[0]), int(v[1]), int(v[2])) for k, v in dict(data["counts"]).items()}
        return cls(str(data["stamp"]), counts)


def score_prediction(prediction: ClassPrediction, masks: np.ndarray, class_names: Sequence[str],
                     stamp: str) -> TaskScore:
    """Counts of one promptless prediction against ``masks`` (C x H x W bool, ``class_names`` order); a
    class the prediction does not know (the model never learned it) predicts nothing."""
    counts = {}
    for index, name in enumerate(class_names):
        truth = masks[index]
        pred = prediction.mask(name) if name in prediction.class_names else np.zeros_like(truth)
        counts[name] = (int(np.logical_and(pred, truth).sum()), int(pred.sum()), int(truth.sum()))
    return TaskScore(stamp, counts)


def _class_sums(scores: Sequence[TaskScore], classes: Sequence[str], weights: np.ndarray | None = None
                ) -> np.ndarray:
    """classes x 3 summed counts (optionally each task counted ``weights[i]`` times)."""
    table = np.array([[s.counts.get(c, (0, 0, 0)) for c in classes] for s in scores], np.float64)
    if not len(scores):
        return np.zeros((len(classes), 3))
    if weights is not None:
        table = table * weights[:, None, None]
    return table.sum(axis=0)


def _mean_iou_of(sums: np.ndarray) -> float:
    inter, pred, true = sums[:, 0], sums[:, 1], sums[:, 2]
    union = pred + true - inter
    scored = union > 0  # a class absent from prediction and truth has no IoU to speak of
    return float((inter[scored] / union[scored]).mean()) if scored.any() else 0.0


def mean_iou(scores: Sequence[TaskScore], classes: Sequence[str]) -> float:
    """Dataset-level mean IoU over ``classes`` of the tasks' summed counts."""
    return _mean_iou_of(_class_sums(scores, classes))


def summarize_scores(scores: Sequence[TaskScore], classes: Sequence[str]) -> dict:
    """What ``training.learn.evaluation.evaluate`` reports, from stored counts: per-class IoU and Dice
    (classes with no pixels in prediction or truth left out) and their means."""
    sums = _class_sums(scores, classes)
    per_class = {}
    for name, (inter, pred, true) in zip(classes, sums, strict=True):
        if pred + true - inter > 0:
            per_class[name] = {"iou": inter / (pred + true - inter), "dice": 2 * inter / (pred + true)}
    ious = [v["iou"] for v in per_class.values()]
    dices = [v["dice"] for v in per_class.values()]
    return {"mean_iou": float(np.mean(ious)) if ious else 0.0, "mean_dice": float(np.mean(dices)) if dices else 0.0,
            "per_class": per_class, "images": len(scores)}


def bootstrap_noise(candidate: Sequence[TaskScore], active: Sequence[TaskScore], classes: Sequence[str],
                    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> float:
    """Standard deviation of mean-IoU(candidate) - mean-IoU(active) over paired task resamples."""
    n = len(candidate)
    if n != len(active):
        raise ValueError(f"paired scores needed: {n} candidate and {len(active)} active tasks")
    if n < 2:
        return 0.0
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        weights = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        diffs.append(_mean_iou_of(_class_sums(candidate, classes, weights))
                     - _mean_iou_of(_class_sums(active, classes, weights)))
    return float(np.std(diffs))


@dataclass(frozen=True)
class MaskGate:
    """The promotion rule: the candidate is promoted unless its held-out mean IoU is below the active
    version's by more than ``max(tolerance, noise)``; a negative tolerance demands improvement."""

    tolerance: float = 0.01

    def decide(self, candidate: Sequence[TaskScore], active: Sequence[TaskScore], classes: Sequence[str]
               ) -> dict:
        """JSON-safe verdict on paired scores: both mean IoUs, the margin, the noise and ``promote``."""
        cand, act = mean_iou(candidate, classes), mean_iou(active, classes)
        noise = bootstrap_noise(candidate, active, classes)
        allowed = self.tolerance if self.tolerance < 0 else max(self.tolerance, noise)
        margin = cand - act
        return {"candidate": cand, "active": act, "margin": margin, "noise": noise, "allowed": allowed,
                "tasks": len(candidate), "promote": margin >= -allowed}
