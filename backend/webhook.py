"""Label Studio webhook events: validate, record, and hand training triggers to a TrainingScheduler.

Label Studio sends every action to the webhook it creates for an ML backend, and waits at most
one second: the handler only counts the event in Redis and calls ``TrainingScheduler.schedule``,
which must enqueue (debounced, coalesced) and return at once. Training never runs here.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol, runtime_checkable

import redis

from backend.project_settings import ProjectSettingsStore
from training.jobs.actions import FORCED_ACTIONS, KNOWN_ACTIONS, TRAINING_ACTIONS
from training.jobs.redis_conn import RedisUnavailable
from training.labelstudio.projects import event_key

log = logging.getLogger(__name__)


@runtime_checkable
class TrainingScheduler(Protocol):
    """Receives training triggers; implemented by ``training.jobs.scheduler`` (rq, debounced).

    ``schedule`` is called from the web request: it must return within milliseconds (enqueue,
    never train) and may raise ``redis.RedisError`` (e.g. ``RedisUnavailable``) when the queue is
    unreachable (the webhook then answers 503 so Label Studio's delivery is visibly failed, not
    silently lost).

    Args:
        project: Label Studio project id, e.g. "3".
        action: the webhook action, one of TRAINING_ACTIONS.
        force: True for START_TRAINING (train even when auto-training is off; the backend has
            already dropped non-forced events of projects whose auto-training is off).
        labeled_tasks: the project's labeled task count when the event carries it (LS's
            ``num_tasks_with_annotations``), else None; lets the scheduler skip a run cheaply.
    Returns:
        A JSON-safe dict describing what happened (e.g. {"status": "queued", "job_id": ...}),
        returned to Label Studio in the webhook answer.
    """

    def schedule(self, project: str, action: str, force: bool, labeled_tasks: int | None = None) -> dict: ...


class RecordingScheduler:
    """A TrainingScheduler that only remembers its calls (for tests: nothing is queued or trained)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []
        self.labeled_tasks: list[int | None] = []
        self._lock = threading.Lock()

    def schedule(self, project: str, action: str, force: bool, labeled_tasks: int | None = None) -> dict:
        with self._lock:
            self.calls.append((project, action, force))
            self.labeled_tasks.append(labeled_tasks)
        return {"status": "recorded", "note": "no training pipeline is connected to this backend"}


class WebhookError(ValueError):
    """The event is not a Label Studio event we can handle; the message says why."""


def event_project(event: dict[str, Any]) -> str | None:
    """The project key of an event: from ``project`` (an object with ``id`` and ``created_at`` gives
    the key /setup got, see ``training.labelstudio.projects.event_key``), else the bare id of its task
    or annotation. Raises WebhookError naming a malformed id."""
    candidates = [event.get("project")]
    for key in ("task", "annotation"):
        item = event.get(key)
        items = item if isinstance(item, list) else [item]
        candidates += [i.get("project") for i in items if isinstance(i, dict)]
    for candidate in candidates:
        if candidate is None or (isinstance(candidate, dict) and candidate.get("id") is None):
            continue
        try:
            return event_key(candidate)
        except ValueError as exc:
            raise WebhookError(str(exc)) from exc
    return None


def labeled_tasks(event: dict[str, Any]) -> int | None:
    """Label Studio's count of labeled tasks, when the event's project object carries it."""
    project = event.get("project")
    count = project.get("num_tasks_with_annotations") if isinstance(project, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else None


class WebhookHandler:
    """Counts events per project and action in Redis and forwards training triggers."""

    def __init__(self, client: redis.Redis, prefix: str, scheduler: TrainingScheduler,
                 settings_store: ProjectSettingsStore) -> None:
        self.client = client
        self.prefix = prefix
        self.scheduler = scheduler
        self.settings_store = settings_store

    def counter_key(self, project: str) -> str:
        return f"{self.prefix}:backend:project:{project}:events"

    def handle(self, action: str, project: str | None, labeled_tasks: int | None = None) -> dict:
        if action not in KNOWN_ACTIONS:
            raise WebhookError(f"unknown webhook action {action!r}; Label Studio actions are: "
                               f"{', '.join(sorted(KNOWN_ACTIONS))}")
        if action in TRAINING_ACTIONS and project is None:
            raise WebhookError(f"{action} event without a project id (expected 'project': {{'id': ...}})")
        log.info("webhook %s for project %s", action, project)
        if project is not None:
            self._count(project, action)
        if action not in TRAINING_ACTIONS:
            return {"status": "ignored", "action": action, "project": project}
        force = action in FORCED_ACTIONS
        settings = self.settings_store.get(project)
        if not force and not settings.auto_training:
            log.info("project %s: %s not scheduled: auto-training is off", project, action)
            return {"status": "ignored", "action": action, "project": project, "reason": "auto-training is off"}
        try:
            outcome = self.scheduler.schedule(project, action, force, labeled_tasks=labeled_tasks)
        except redis.RedisError as exc:
            raise RedisUnavailable(f"cannot queue training for project {project}: Redis unreachable ({exc})") from exc
        return {"status": "accepted", "action": action, "project": project, "training": outcome}

    def _count(self, project: str, action: str) -> None:
        try:
            pipe = self.client.pipeline()
            pipe.hincrby(self.counter_key(project), action, 1)
            pipe.hset(self.counter_key(project), "last_event_at", f"{time.time():.3f}")
            pipe.execute()
        except redis.RedisError as exc:
            raise RedisUnavailable(f"cannot record the {action} event of project {project}: "
                                   f"Redis unreachable ({exc})") from exc

    def counts(self, project: str) -> dict[str, int | float]:
        """Events per action and ``last_event_at``; raises RedisUnavailable."""
        try:
            raw = self.client.hgetall(self.counter_key(project))
        except redis.RedisError as exc:
            raise RedisUnavailable(f"Redis unreachable: {exc}") from exc
        out: dict[str, int | float] = {}
        for key, value in raw.items():
            name = key.decode() if isinstance(key, bytes) else key
            text = value.decode() if isinstance(value, bytes) else value
            out[name] = float(text) if name == "last_event_at" else int(text)
        return out
