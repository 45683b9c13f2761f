"""Held-out evaluation: per-class IoU and Dice through the same predictor that serves masks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from training.data.dataset import SegmentationDataset
from training.inference.predictor import ImageEmbedding, Predictor
from training.model.adapter import SamAdapter


def evaluate(model: SamAdapter, dataset: SegmentationDataset, precision: str = "auto",
             embeddings: Sequence[ImageEmbedding] | None = None) -> dict:
    """Dataset-level IoU and Dice per class (pixels summed over images), and their means.

    ``embeddings``: one per sample under ``model``'s encoder (e.g. from the embedding store, shared by
    every frozen-encoder model on this base); None encodes each image.

    Classes are matched by name; a class with no pixels in either prediction or truth over the whole
    dataset is left out of the means (it has no IoU to speak of). Returns JSON-safe numbers.
    """
    classes = [n for n in dataset.class_names if n in model.class_names]
    inter = dict.fromkeys(classes, 0)
    pred_sum = dict.fromkeys(classes, 0)
    true_sum = dict.fromkeys(classes, 0)
    predictor = Predictor(model, precision=precision)
    if embeddings is not None and len(embeddings) != len(dataset):
        raise ValueError(f"{len(embeddings)} embeddings for {len(dataset)} samples")
    for index, sample in enumerate(dataset.samples):
        embedding = predictor.embed([sample.image])[0] if embeddings is None else embeddings[index]
        prediction = predictor.predict_classes(embedding, classes)
        for name in classes:
            pred = prediction.mask(name)
            truth = sample.masks[dataset.class_names.index(name)]
            inter[name] += int(np.logical_and(pred, truth).sum())
            pred_sum[name] += int(pred.sum())
            true_sum[name] += int(truth.sum())
    per_class = {}
    for name in classes:
        union = pred_sum[name] + true_sum[name] - inter[name]
        if union == 0:
            continue
        per_class[name] = {
            "iou": inter[name] / union,
            "dice": 2 * inter[name] / (pred_sum[name] + true_sum[name]),
        }
    ious = [v["iou"] for v in per_class.values()]
    dices = [v["dice"] for v in per_class.values()]
    return {
        "mean_iou": float(np.mean(ious)) if ious else 0.0,
        "mean_dice": float(np.mean(dices)) if dices else 0.0,
        "per_class": per_class,
        "images": len(dataset),
    }
