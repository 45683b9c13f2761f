"""The labeled tasks of a project on the worker's disk, so a run fetches only what changed.

Per project (by key) a directory holds ``index.json`` and one ``task-<id>.npz`` of packed masks per
task. An entry records the task's ``updated_at`` in Label Studio's task list (``listed``: whether to
fetch it again), the annotation trained on (``stamp``: its id and ``updated_at``; a task whose stamp
changes is new to training), the downloaded image, and the content digest of the image as trained on
(the embedding store's key: a cached task needs no image decode when its embedding is stored).

The cache is a cache: a label config with other classes, or an unreadable index, starts it afresh, and a
worker on another machine builds its own. Images are not copied: they stay in the SDK's download cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from training.data.images import load_image

__all__ = ["CachedTask", "TaskCache", "config_fingerprint"]

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


@dataclass
class CachedTask:
    """One labeled task as the last run saw it (``size`` is H, W of the image as trained on)."""

    task_id: int
    listed: str
    stamp: str
    image: str
    digest: str
    size: tuple[int, int]
    classes: list[str] = field(default_factory=list)


def config_fingerprint(label_config: str, max_side: int) -> str:
    """What the cached masks depend on besides the annotation: the label config and the size bound."""
    return hashlib.sha256(f"{max_side}\n{label_config}".encode()).hexdigest()[:16]


class TaskCache:
    """``index.json`` + masks under ``directory`` (see the module doc). Not thread-safe: one run at a time
    per project, which the project's training lock guarantees."""

    def __init__(self, directory: str | Path, fingerprint: str, class_names: list[str]) -> None:
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.class_names = list(class_names)
        self.tasks: dict[int, CachedTask] = {}
        self.directory.mkdir(parents=True, exist_ok=True)
        self._load()

    @property
    def _index_path(self) -> Path:
        return self.directory / "index.json"

    def _mask_path(self, task_id: int) -> Path:
        return self.directory / f"task-{task_id}.npz"

    def _load(self) -> None:
        try:
            data = json.loads(self._index_path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("task cache %s unreadable (%s): starting afresh", self._index_path, exc)
            return
        if (data.get("format") != CACHE_FORMAT or data.get("fingerprint") != self.fingerprint
                or data.get("classes") != self.class_names):
            log.info("task cache %s is for another label config: starting afresh", self.directory)
            return
        for raw in data.get("tasks", []):
            entry = CachedTask(**{**raw, "size": tuple(raw["size"])})
            if self._mask_path(entry.task_id).exists():
                self.tasks[entry.task_id] = entry

    def save(self) -> None:
        """Write the index atomically (a crash leaves the previous one)."""
        payload = {"format": CACHE_FORMAT, "fingerprint": self.fingerprint, "classes": self.class_names,
                   "tasks": [asdict(t) for t in sorted(self.tasks.values(), key=lambda t: t.task_id)]}
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".index-", suffix=".tmp")
        with os.fdopen(fd, "w") as out:
            json.dump(payload, out)
        os.replace(tmp, self._index_path)

    def put(self, entry: CachedTask, masks: np.ndarray) -> None:
        """Store a task's C x H x W bool masks (class order of the cache) and its entry."""
        if masks.shape[0] != len(self.class_names) or tuple(masks.shape[1:]) != tuple(entry.size):
            raise ValueError(f"masks of shape {masks.shape} for {len(self.class_names)} classes at {entry.size}")
        np.savez_compressed(self._mask_path(entry.task_id), bits=np.packbits(masks.astype(bool)),
                            shape=np.array(masks.shape))
        self.tasks[entry.task_id] = entry

    def drop(self, task_id: int) -> None:
        self.tasks.pop(task_id, None)
        self._mask_path(task_id).unlink(missing_ok=True)

    def masks(self, task_id: int) -> np.ndarray:
        """C x H x W bool masks of a cached task."""
        with np.load(self._mask_path(task_id)) as data:
            shape = tuple(int(v) for v in data["shape"])
            return np.unpackbits(data["bits"], count=int(np.prod(shape))).reshape(shape).astype(bool)

    def image(self, task_id: int) -> np.ndarray:
        """The task's image as trained on: the downloaded file, decoded and shrunk to the cached size.

        Raises:
            ImageError: the file is gone or unreadable (the next sync fetches the task again).
        """
        entry = self.tasks[task_id]
        image = load_image(entry.image)
        height, width = entry.size
        if image.shape[:2] != (height, width):
            # The export's downscale: area averaging to the size it recorded.
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        return image
