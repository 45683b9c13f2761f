"""Label Studio export -> SegmentationDataset: labeled tasks, their images, per-class masks.

The project's synchronous JSON export carries every annotation of every labeled task (see
``client``); ``annotations`` picks one per task and turns its regions into masks; images are
downloaded with the SDK's ``get_local_path`` (auth only to Label Studio's own host, presigned
cloud URLs) and kept in a cache directory between runs.

A task whose image cannot be fetched or read (above ``load_image``'s 100-megapixel cap, too) or
whose annotation cannot be decoded is skipped and reported; Label Studio being unreachable or
refusing us raises ``LabelStudioError``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from label_studio_sdk._extensions.label_studio_tools.core.utils import io as ls_io

from training.data.dataset import SegmentationDataset, from_items
from training.data.images import ImageError, load_image
from training.labelstudio.annotations import TaskSkipped, annotation_masks, pick_annotation
from training.labelstudio.client import (
    LabelStudioSource,
    TimeoutSession,
    connect,
    download_token,
    fetch_label_config,
    fetch_labeled_tasks,
)
from training.labelstudio.label_config import LabelSetup, parse_label_config
from training.labelstudio.projects import project_key, project_number

__all__ = ["ExportResult", "download_session", "export_dataset", "task_sample"]

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """The dataset plus what was left out and why.

    ``skipped``: [{"task": id, "reason": str}] for tasks that had a usable annotation but could not
    be used; ``task_ids``: tasks in the dataset (sample names are ``task-<id>``);
    ``annotations``: {task id: annotation id used}.
    """

    dataset: SegmentationDataset
    skipped: list[dict[str, Any]] = field(default_factory=list)
    task_ids: list[int] = field(default_factory=list)
    annotations: dict[int, int | None] = field(default_factory=dict)
    cancelled_only: int = 0

    def summary(self) -> dict[str, Any]:
        """JSON-safe description for job results and version metadata."""
        return {
            "tasks": len(self.task_ids),
            "task_ids": list(self.task_ids),
            "skipped": list(self.skipped),
            "cancelled_only": self.cancelled_only,
            "class_names": list(self.dataset.class_names),
        }



def _fetch_image(url: str, task: dict, source: LabelStudioSource, token: str, cache_dir: Path) -> Path:
    try:
        # The SDK sends the token only when the URL's host is Label Studio's own.
        return Path(ls_io.get_local_path(url, cache_dir=str(cache_dir), hostname=source.url.rstrip("/"),
                                         access_token=token, task_id=task.get("id"), download_resources=True))
    except Exception as exc:  # requests and OS errors, and a bare Exception for cloud URLs without a task id
        raise TaskSkipped(f"image {url} cannot be fetched: {exc}") from exc


def _task_image(task: dict, setup: LabelSetup, source: LabelStudioSource, token: str, cache_dir: Path
                ) -> tuple[Path, np.ndarray]:
    url = (task.get("data") or {}).get(setup.image_key)
    if not isinstance(url, str) or not url:
        raise TaskSkipped(f"task data has no image URL in field {setup.image_key!r}")
    path = _fetch_image(url, task, source, token, cache_dir)
    try:
        return path, load_image(path)
    except ImageError as exc:
        if not path.is_relative_to(cache_dir):
            raise TaskSkipped(f"image {url} cannot be read: {exc}") from exc
        # A download cut short stays in the cache under the same name: drop it and fetch once more.
        path.unlink(missing_ok=True)
    path = _fetch_image(url, task, source, token, cache_dir)
    try:
        return path, load_image(path)
    except ImageError as exc:
        raise TaskSkipped(f"image {url} cannot be read: {exc}") from exc


def download_session(source: LabelStudioSource):
    """The session ``get_local_path`` downloads through: timeouts and retries of ``source``."""
    return ls_io.http_session(TimeoutSession(source.timeout, source.retries, source.backoff))


def task_sample(task: dict, annotation: dict, setup: LabelSetup, source: LabelStudioSource, token: str,
                cache_dir: Path, max_side: int | None) -> tuple[Path, np.ndarray, dict[str, np.ndarray]]:
    """(downloaded image path, image, {class: mask}) of one task's ``annotation``, shrunk to ``max_side``.

    Raises:
        TaskSkipped: the image cannot be fetched or read, or the annotation cannot be decoded.
    """
    path, image = _task_image(task, setup, source, token, cache_dir)
    masks = annotation_masks(annotation.get("result"), setup, image.shape[0], image.shape[1])
    image, masks = _downscale(image, masks, max_side)
    return path, image, masks


def _downscale(image: np.ndarray, masks: dict[str, np.ndarray], max_side: int | None
               ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Bound memory: shrink images whose longest side exceeds ``max_side`` (masks follow)."""
    height, width = image.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return image, masks
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    # Area-average then threshold: a mask pixel survives if it covered most of its new pixel.
    small_masks = {k: cv2.resize(m.astype(np.float32), size, interpolation=cv2.INTER_AREA) >= 0.5
                   for k, m in masks.items()}
    return small, small_masks


class _DropLocalhostAdvice(logging.Filter):
    """get_local_path warns on every image when LABEL_STUDIO_URL is localhost (Docker advice);
    once per process is plenty."""

    seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Using `localhost`"):
            return True
        first, _DropLocalhostAdvice.seen = not _DropLocalhostAdvice.seen, True
        return first


def quiet_sdk_download_log() -> None:
    sdk_log = logging.getLogger(ls_io.__name__)
    if not any(isinstance(f, _DropLocalhostAdvice) for f in sdk_log.filters):
        sdk_log.addFilter(_DropLocalhostAdvice())


def export_dataset(source: LabelStudioSource, project: str | int, cache_dir: str | Path,
                   max_side: int | None = None) -> ExportResult:
    """Export a project's labeled tasks as a SegmentationDataset.

    Args:
        source: Label Studio URL, API key and retry policy.
        project: ``"<id>"`` or ``"<id>.<timestamp>"``.
        cache_dir: downloaded images are kept here (keyed by URL) for the next run.
        max_side: if set, images (and masks) larger than this are shrunk to it, to bound memory.

    Returns:
        ExportResult; samples are named ``task-<id>`` in task order, images H x W x 3 uint8 RGB
        (display orientation), masks C x H x W bool in the label config's class order.

    Raises:
        LabelStudioError: Label Studio unreachable / 401 / 5xx after retries (names URL and status).
        LabelConfigError: the label config has nothing to train masks on (see ``label_config``).
    """
    project_id = project_number(project)
    quiet_sdk_download_log()
    # By key: project 3 of a fresh Label Studio has other images under the same /data/upload/3/ paths.
    cache = Path(cache_dir) / f"project-{project_key(project)}"
    cache.mkdir(parents=True, exist_ok=True)
    client = connect(source)
    setup = parse_label_config(fetch_label_config(client, source, project_id))
    tasks = fetch_labeled_tasks(client, source, project_id)
    token = download_token(client, source)
    items: list[tuple[str, np.ndarray, dict[str, np.ndarray]]] = []
    class_names = list(setup.labels)
    result = ExportResult(SegmentationDataset(class_names, []))
    with download_session(source):
        for task in tasks:
            task_id = task.get("id")
            annotation = pick_annotation(task)
            if annotation is None:
                result.cancelled_only += 1
                continue
            try:
                _, image, masks = task_sample(task, annotation, setup, source, token, cache, max_side)
            except TaskSkipped as exc:
                log.warning("task %s skipped: %s", task_id, exc)
                result.skipped.append({"task": task_id, "reason": str(exc)})
                continue
            items.append((f"task-{task_id}", image, masks))
            result.task_ids.append(task_id)
            result.annotations[task_id] = annotation.get("id")
    result.dataset = from_items(class_names, items)
    log.info("exported project %s: %d labeled tasks used, %d skipped, %d with only cancelled annotations; "
             "classes %s", project_id, len(items), len(result.skipped), result.cancelled_only, class_names)
    return result
