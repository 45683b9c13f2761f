"""A dataset on disk (a mask folder, COCO) as a project's tasks, so the CLI trains through ``run_project``.

Each image becomes a task whose id comes from its name (stable across invocations, so the held-out set
and "new since the active version" mean the same as for a Label Studio project) and whose stamp is a
digest of its image and masks: an image whose masks were redrawn is a changed task, a file that left
the dataset leaves the training set. The task cache holds a PNG copy of each image next to its masks.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np

from training.data.dataset import DatasetError, SegmentationDataset
from training.data.images import image_digest
from training.labelstudio.incremental import SyncResult
from training.labelstudio.task_cache import CachedTask, TaskCache

__all__ = ["dataset_task_id", "sync_dataset"]


def dataset_task_id(name: str) -> int:
    """A task id from a sample's name: 48 bits of its hash (JSON-safe, collisions a non-issue at dataset sizes)."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:12], 16)


def _stamp(image: np.ndarray, masks: np.ndarray) -> str:
    return f"{image_digest(image)[:16]}-{image_digest(np.packbits(masks))[:16]}"


def sync_dataset(dataset: SegmentationDataset, directory: str | Path) -> SyncResult:
    """Bring the task cache in ``directory`` up to date with ``dataset``; only changed samples are written.

    Raises:
        DatasetError: two samples share a name (they would be one task).
    """
    fingerprint = hashlib.sha256("\n".join(dataset.class_names).encode()).hexdigest()[:16]
    cache = TaskCache(directory, fingerprint, dataset.class_names)
    images = Path(directory) / "images"
    images.mkdir(parents=True, exist_ok=True)
    result = SyncResult(cache, listed=len(dataset))
    current: dict[int, str] = {}
    for sample in dataset:
        task_id = dataset_task_id(sample.name)
        if task_id in current:
            raise DatasetError(f"two images are named {sample.name!r}: rename one (names identify tasks)")
        stamp = current[task_id] = _stamp(sample.image, sample.masks)
        old = cache.tasks.get(task_id)
        if old is not None and old.stamp == stamp:
            continue
        path = images / f"{task_id}.png"
        cv2.imwrite(str(path), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
        present = [n for n, plane in zip(dataset.class_names, sample.masks, strict=True) if plane.any()]
        cache.put(CachedTask(task_id, stamp, stamp, str(path), image_digest(sample.image),
                             tuple(sample.image.shape[:2]), present), sample.masks)
        result.fetched.append(task_id)
        result.changed.append(task_id)
    for task_id in [t for t in cache.tasks if t not in current]:
        cache.drop(task_id)
        (images / f"{task_id}.png").unlink(missing_ok=True)
        result.removed.append(task_id)
    cache.save()
    return result
