"""Encoding ahead of the annotator: a project's task images are encoded before anyone opens them.

When Label Studio connects (``/setup``), when tasks are imported (``TASKS_CREATED``), when the switch
is turned on and when a batch ``/predict`` arrives before any adapter exists, the project is queued here.
Label Studio also calls ``/setup`` before every prediction request, on every listing of a project's
models and on every model page: a ``/setup`` lists the project again only when this process has not
listed it yet (a connect), its label config or settings changed, or ``relist_seconds`` have passed.
One background thread lists its tasks through Label Studio's API (``GET /api/tasks``, in Label Studio's order, at most
``PREENCODE_MAX_TASKS``), downloads each image and encodes those not stored yet with the base encoder
(``ModelService.encode_ahead``: no model lock, paused at every encoder block while a request runs).
The embeddings land in the disk store, valid for every frozen-encoder adapter version, so the first
click on a task is warm, after restarts too. Per-project progress is kept in memory (this process
does the encoding) and logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass

from cachetools import LRUCache

from backend.image_source import ImageSource
from backend.metrics import ENCODINGS_AHEAD
from backend.model_service import ModelService
from backend.predict import PredictionService
from backend.project_settings import PROJECTS_IN_MEMORY, ProjectSettingsStore
from training.inference.priority import lower_this_threads_priority
from training.labelstudio.client import LabelStudioError, connect, list_tasks
from training.labelstudio.label_config import LabelConfigError, parse_label_config
from training.labelstudio.projects import project_number

log = logging.getLogger(__name__)

LOG_EVERY = 25  # tasks between progress lines in the log
CLOSE_WAIT_S = 5.0
PREENCODE_NICENESS = 15  # below training jobs (SAMLOOP_WORKER_NICE, default 10) and far below requests


@dataclass
class Progress:
    """One project's encoding ahead: ``encoded`` of ``total`` tasks have a stored embedding."""

    state: str = "queued"  # queued, listing, encoding, done, failed, off
    total: int = 0
    encoded: int = 0  # tasks whose image is stored now (encoded here or found stored)
    newly_encoded: int = 0
    failed: int = 0  # tasks whose image could not be had
    seconds: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Job:
    project: str
    tasks: tuple[tuple[int | None, object], ...] | None  # (task id, image URL); None: list them from LS


class PreEncoder:
    """The background queue of projects (and task batches) to encode ahead, and their progress."""

    def __init__(self, models: ModelService, predictions: PredictionService, images: ImageSource,
                 store: ProjectSettingsStore, max_tasks: int, relist_seconds: float = 300.0) -> None:
        self.models, self.predictions, self.images, self.store = models, predictions, images, store
        self.max_tasks = max_tasks
        self.relist_seconds = relist_seconds
        # project -> (monotonic time, label config hash) of its last listing asked for by /setup
        self._listed: LRUCache[str, tuple[float, int]] = LRUCache(PROJECTS_IN_MEMORY)
        self._queue: OrderedDict[tuple[str, bool], _Job] = OrderedDict()
        self._progress: LRUCache[str, Progress] = LRUCache(PROJECTS_IN_MEMORY)
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pre-encoder", daemon=True)
        self._thread.start()

    # ----- asking ------------------------------------------------------------------------------------
    def request(self, project: str, reason: str) -> bool:
        """Queue the project's tasks (listed from Label Studio); False when its switch is off."""
        return self._enqueue(_Job(project, None), reason)

    def request_on_setup(self, project: str, label_config: str, settings_changed: bool) -> bool:
        """``/setup``'s request: queued only at a connect, a change, or ``relist_seconds`` after the last one."""
        now, config = time.monotonic(), hash(label_config)
        with self._wake:
            last = self._listed.get(project)
            if (not settings_changed and last is not None and last[1] == config
                    and now - last[0] < self.relist_seconds):
                return False
            self._listed[project] = (now, config)
        return self.request(project, "setup")

    def submit(self, project: str, tasks: list[tuple[int | None, object]], reason: str) -> bool:
        """Queue these (task id, image URL) pairs of the project, e.g. a batch /predict's tasks."""
        return self._enqueue(_Job(project, tuple(tasks[: self.max_tasks])), reason)

    def progress(self, project: str) -> dict | None:
        with self._wake:
            found = self._progress.get(project)
            return found.to_dict() if found is not None else None

    def idle(self) -> bool:
        """Nothing queued or running (tests wait on it)."""
        with self._wake:
            return not self._queue and all(p.state not in ("queued", "listing", "encoding")
                                           for p in self._progress.values())

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._queue.clear()
            self._wake.notify_all()
        # An image being encoded finishes first (about a second); a stuck download must not hold up shutdown.
        self._thread.join(timeout=CLOSE_WAIT_S)

    def _enqueue(self, job: _Job, reason: str) -> bool:
        if not self.max_tasks:
            return False
        if not self.store.get(job.project).preencode:
            log.info("project %s: pre-encoding is switched off (preencode=false); not encoding ahead (%s)",
                     job.project, reason)
            with self._wake:
                self._progress[job.project] = Progress(state="off")
            return False
        with self._wake:
            if self._closed:
                return False
            key = (job.project, job.tasks is None)
            waiting = self._queue.get(key)
            if waiting is not None and job.tasks is not None:  # batches still waiting are merged, not replaced
                merged = dict.fromkeys(waiting.tasks + job.tasks)
                job = _Job(job.project, tuple(merged)[: self.max_tasks])
            self._queue[key] = job  # a project is listed once, however often asked meanwhile
            current = self._progress.get(job.project)
            if current is None or current.state not in ("listing", "encoding"):
                self._progress[job.project] = Progress()
            self._wake.notify_all()
        log.info("project %s: encoding its task images ahead (%s)", job.project, reason)
        return True

    # ----- the background thread --------------------------------------------------------------------
    def _run(self) -> None:
        # The most deferrable work here: below requests and below training jobs (SAMLOOP_WORKER_NICE, 10 by
        # default), which a re-listing of a large project otherwise slowed twofold.
        lower_this_threads_priority(PREENCODE_NICENESS)
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._queue or self._closed)
                if self._closed:
                    return
                _, job = self._queue.popitem(last=False)
            try:
                self._encode_project(job)
            except Exception as exc:  # one project's trouble must not stop the thread for the others
                log.exception("project %s: encoding ahead failed", job.project)
                self._update(job.project, state="failed", error=f"{type(exc).__name__}: {exc}")

    def _update(self, project: str, **changes: object) -> Progress:
        with self._wake:
            progress = self._progress.setdefault(project, Progress())
            for name, value in changes.items():
                setattr(progress, name, value)
            return progress

    def _encode_project(self, job: _Job) -> None:
        start = time.monotonic()
        self._update(job.project, state="listing")
        tasks = list(job.tasks) if job.tasks is not None else self._list(job.project)
        if tasks is None:
            return
        self._update(job.project, state="encoding", total=len(tasks), encoded=0, newly_encoded=0, failed=0)
        encoded = newly = failed = 0
        for index, (task_id, url) in enumerate(tasks, 1):
            if self._closed:
                return
            if self._already_encoded(url, job.project):
                encoded += 1
                self._update(job.project, encoded=encoded)
                continue
            fetched = self.predictions.fetch_image(url, task_id, job.project)
            if fetched.error is not None:
                log.warning("project %s: cannot encode task %s ahead: %s", job.project, task_id, fetched.error)
                failed += 1
            else:
                if self.models.encode_ahead(fetched.digest, fetched.image):
                    newly += 1
                    ENCODINGS_AHEAD.labels("preencoder").inc()
                encoded += 1
            self._update(job.project, encoded=encoded, newly_encoded=newly, failed=failed)
            if index % LOG_EVERY == 0:
                log.info("project %s: encoded ahead %d of %d tasks", job.project, index, len(tasks))
        done = self._update(job.project, state="done", seconds=round(time.monotonic() - start, 1))
        log.info("project %s: encoding ahead done: %d of %d tasks stored (%d newly encoded, %d failed) in %.1f s",
                 job.project, done.encoded, done.total, done.newly_encoded, done.failed, done.seconds)

    def _already_encoded(self, url: object, project: str) -> bool:
        """Whether this URL's image was fetched before and its embedding is kept: a re-listing then costs no
        download and no decode (1,000 encoded tasks took 10 s of both, beside a training job)."""
        digest = self.predictions.known_digest(url, project)
        return digest is not None and self.models.has_base_embedding(digest)

    def _list(self, project: str) -> list[tuple[int | None, object]] | None:
        """The project's (task id, image URL) pairs from Label Studio, or None (progress says why)."""
        config = self.store.label_config(project)
        auth = self.images.label_studio(project)
        if not config:
            problem = "no label config known for the project (connect it again)"
        elif auth is None:
            problem = ("no Label Studio URL and API key to list tasks with "
                       "(set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)")
        else:
            try:
                key = parse_label_config(config).image_key
                source = auth.source()
                tasks = list_tasks(connect(source), source, project_number(project), self.max_tasks)
                return [(task["id"], task["data"].get(key)) for task in tasks]
            except (LabelConfigError, LabelStudioError, ValueError) as exc:
                problem = str(exc)
        log.warning("project %s: cannot encode ahead: %s", project, problem)
        self._update(project, state="failed", error=problem)
        return None
