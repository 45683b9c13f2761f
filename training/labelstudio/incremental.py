"""The incremental export: bring a project's task cache up to date, fetching only what changed.

One run asks Label Studio for (1) the project (its label config), (2) the labeled-task index (ids and
``updated_at``, a few bytes a task) and (3) the full export of the tasks whose ``updated_at`` differs
from the cache's, in chunks of 200: after one new annotation that is one export request for one task,
however many tasks are labeled. Images are downloaded only for tasks whose annotation or image changed.

- A task gone from the index (deleted, or its last annotation deleted) leaves the cache, and with it the
  training set. So does a task whose annotations are all cancelled.
- A task whose image cannot be fetched or read, or whose annotation cannot be decoded, is skipped with a
  logged reason and stays out of the cache, so the next run tries it again; the run goes on.
- Label Studio unreachable or refusing us raises ``LabelStudioError`` before anything is changed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.data.images import image_digest
from training.labelstudio.annotations import TaskSkipped, pick_annotation
from training.labelstudio.client import LabelStudioSource, connect, download_token, fetch_label_config
from training.labelstudio.export import download_session, quiet_sdk_download_log, task_sample
from training.labelstudio.label_config import LabelSetup, parse_label_config
from training.labelstudio.projects import project_key, project_number
from training.labelstudio.task_cache import CachedTask, TaskCache, config_fingerprint
from training.labelstudio.task_index import fetch_tasks, labeled_index

__all__ = ["SyncResult", "annotation_stamp", "sync_project"]

log = logging.getLogger(__name__)


@dataclass
class SyncResult:
    """The cache after a sync and what the sync did.

    ``fetched``: task ids whose full export was requested; ``changed``: tasks whose annotation is new or
    changed (masks rebuilt); ``removed``: tasks that left the training set; ``skipped``:
    [{"task", "reason"}] for labeled tasks that cannot be used now.
    """

    cache: TaskCache
    listed: int = 0
    fetched: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    cancelled_only: int = 0

    @property
    def class_names(self) -> list[str]:
        return self.cache.class_names

    def summary(self) -> dict[str, Any]:
        """JSON-safe description for job results and version metadata."""
        return {"tasks": len(self.cache.tasks), "listed": self.listed, "fetched": len(self.fetched),
                "changed": len(self.changed), "removed": len(self.removed), "skipped": list(self.skipped),
                "cancelled_only": self.cancelled_only, "class_names": list(self.class_names)}


def annotation_stamp(annotation: dict) -> str:
    """Which version of which annotation a task's masks came from."""
    return f"{annotation.get('id')}@{annotation.get('updated_at') or annotation.get('created_at') or ''}"


def _store(cache: TaskCache, task: dict, annotation: dict, setup: LabelSetup, listed: str,
           source: LabelStudioSource, token: str, images: Path, max_side: int | None) -> bool:
    """Cache one fetched task; True when its masks were (re)built, False when only its listing moved."""
    task_id = int(task["id"])
    stamp = annotation_stamp(annotation)
    old = cache.tasks.get(task_id)
    if old is not None and old.stamp == stamp:
        old.listed = listed  # a prediction or a cancelled annotation touched it; the masks stand
        return False
    path, image, masks = task_sample(task, annotation, setup, source, token, images, max_side)
    planes = np.stack([masks.get(name, np.zeros(image.shape[:2], bool)) for name in cache.class_names])
    present = [name for name, plane in zip(cache.class_names, planes, strict=True) if plane.any()]
    entry = CachedTask(task_id, listed, stamp, str(path), image_digest(image), tuple(image.shape[:2]), present)
    cache.put(entry, planes)
    return True


def sync_project(source: LabelStudioSource, project: str | int, cache_root: str | Path, images_root: str | Path,
                 max_side: int | None = None) -> SyncResult:
    """Bring ``<cache_root>/project-<key>`` up to date with Label Studio (see the module doc).

    Raises:
        LabelStudioError: Label Studio unreachable or refusing us (after retries).
        LabelConfigError: the label config has nothing to train masks on.
    """
    project_id, key = project_number(project), project_key(project)
    quiet_sdk_download_log()
    client = connect(source)
    label_config = fetch_label_config(client, source, project_id)
    setup = parse_label_config(label_config)
    cache = TaskCache(Path(cache_root) / f"project-{key}", config_fingerprint(label_config, max_side or 0),
                      list(setup.labels))
    index = labeled_index(client, source, project_id)
    result = SyncResult(cache, listed=len(index))
    for task_id in [t for t in cache.tasks if t not in index]:
        cache.drop(task_id)
        result.removed.append(task_id)
    result.fetched = sorted(t for t, stamp in index.items() if t not in cache.tasks or cache.tasks[t].listed != stamp)
    tasks = fetch_tasks(client, source, project_id, result.fetched) if result.fetched else []
    exported = {int(t["id"]) for t in tasks}
    images = Path(images_root) / f"project-{key}"
    images.mkdir(parents=True, exist_ok=True)
    token = download_token(client, source) if tasks else ""
    with download_session(source):
        for task in tasks:
            _sync_task(result, task, setup, index[int(task["id"])], source, token, images, max_side)
    for task_id in [t for t in result.fetched if t not in exported and t in cache.tasks]:
        cache.drop(task_id)  # listed as labeled a moment ago, not in the export now: deleted meanwhile
        result.removed.append(task_id)
    cache.save()
    log.info("synced project %s: %d labeled tasks listed, %d fetched, %d changed, %d removed, %d skipped",
             key, result.listed, len(result.fetched), len(result.changed), len(result.removed), len(result.skipped))
    return result


def _sync_task(result: SyncResult, task: dict, setup: LabelSetup, listed: str, source: LabelStudioSource,
               token: str, images: Path, max_side: int | None) -> None:
    task_id = int(task["id"])
    annotation = pick_annotation(task)
    if annotation is None:
        result.cancelled_only += 1
        if task_id in result.cache.tasks:
            result.cache.drop(task_id)
            result.removed.append(task_id)
        return
    try:
        if _store(result.cache, task, annotation, setup, listed, source, token, images, max_side):
            result.changed.append(task_id)
    except TaskSkipped as exc:
        log.warning("task %s skipped: %s", task_id, exc)
        result.skipped.append({"task": task_id, "reason": str(exc)})
        if task_id in result.cache.tasks:  # its new annotation is unusable: the old one must not stand in
            result.cache.drop(task_id)
            result.removed.append(task_id)
