"""Turn Label Studio events into training jobs: debounced, coalesced, one run at a time per project.

``TrainingScheduler.schedule`` is the webhook's side of the protocol: one Redis script and at
most one enqueue, so it returns in milliseconds. The job's side is ``training.jobs.project_run``
(wait out the burst, claim the events, hold the project's lock, finish); the keys and scripts
both use are in ``training.jobs.keys``.

- ``events`` counts every accepted event. ``queued`` names the job that will see the next events
  (at most one): ``schedule`` makes a new job only when there is none, or the one named has ended
  (finished, failed, stopped, gone); otherwise the event coalesces into it.
- The job that trains holds ``lock``; it claims the events (``queued`` cleared, ``events`` read)
  and the lock in one script. A run that ends with ``events > claimed`` and nothing queued
  enqueues the single follow-up itself.

So a burst of 50 events makes one job; events during a run make exactly one follow-up run that
sees them; a crashed run does not mark its events done (rq ``Retry`` runs it again). Projects
never share keys or locks: they train in parallel when there are workers for it.

Debounce: a job waits until no event has arrived for ``debounce_seconds`` (at most
``max_debounce_seconds``) before claiming, so the first annotation of a burst doesn't start a run
that the rest of the burst immediately makes stale.

TRAIN_MIN_ANNOTATIONS is checked in the job after the export (the webhook cannot afford a Label
Studio round trip); ``schedule`` can also drop an event cheaply when the caller passes the labeled
task count it already has (Label Studio's ``num_tasks_with_annotations`` in the event's project).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from datetime import UTC
from typing import Any

import redis
from rq import Callback, Queue, Retry
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from training.jobs import job_stats
from training.jobs.actions import ADMIN_TRAIN, FORCED_ACTIONS, TRAINING_ACTIONS
from training.jobs.keys import RELEASE_QUEUED, SCHEDULE, ProjectKeys, text
from training.jobs.redis_conn import RedisUnavailable
from training.labelstudio.projects import project_key
from training.pipeline.settings import DEFAULT_DEBOUNCE_SECONDS, JobSettings

__all__ = ["DEFAULT_JOB", "DEFAULT_QUEUE", "TrainingScheduler"]

log = logging.getLogger(__name__)

DEFAULT_QUEUE = "samloop-training"
DEFAULT_JOB = "training.jobs.training_job.run_training_job"
# A job id written to ``queued`` whose rq hash isn't saved yet is being enqueued right now.
_ENQUEUE_GRACE_SECONDS = 30
# rq states of a job that has not ended: waiting (queued, scheduled for a retry, deferred) or running.
_WAITING = (JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED)
_LIVE = (*_WAITING, JobStatus.STARTED)
_STATS = "training.jobs.job_stats"


class TrainingScheduler:
    """Enqueue training for a project from webhook events.

    Args:
        connection: a ``redis.Redis`` with ``decode_responses=False`` (rq's requirement).
        job_settings: JSON-safe dict handed to every job (see ``training.pipeline.settings.JobSettings``).
        queue_name: the rq queue workers listen on.
        debounce_seconds: quiet time a job waits for before it claims the events.
        max_debounce_seconds: the longest a steady stream of events can delay a run.
        min_annotations: events whose caller-known labeled task count is below this are dropped.
        auto_training_enabled: ``project -> bool``; annotation events are ignored when it says
            False (START_TRAINING and ``force=True`` still train). None: always on.
        prefix: Redis key namespace (shared with the backend's SAMLOOP_REDIS_PREFIX).
        job_func: dotted path of the job function (tests substitute a cheap one).
        job_timeout: rq timeout in seconds; default from the job settings' training budget.
        retry_intervals: rq Retry back-off in seconds (needs a worker running rq's scheduler).
        job_overrides: ``project -> dict`` of job settings for that project, read when its job is
            enqueued (e.g. its adapter kind); a follow-up run enqueued by the worker reuses them.
    """

    def __init__(self, connection: redis.Redis, job_settings: dict[str, Any] | None = None,
                 queue_name: str = DEFAULT_QUEUE, debounce_seconds: float = DEFAULT_DEBOUNCE_SECONDS,
                 max_debounce_seconds: float = 60.0, min_annotations: int = 1,
                 auto_training_enabled: Callable[[str], bool] | None = None, prefix: str = "samloop",
                 job_func: str = DEFAULT_JOB, job_timeout: int | None = None,
                 retry_intervals: tuple[int, ...] = (30, 120),
                 job_overrides: Callable[[str], dict[str, Any]] | None = None) -> None:
        if debounce_seconds < 0 or max_debounce_seconds < debounce_seconds:
            raise ValueError(f"need 0 <= debounce_seconds <= max_debounce_seconds, got {debounce_seconds}, "
                             f"{max_debounce_seconds}")
        if not isinstance(min_annotations, int) or min_annotations < 0:
            raise ValueError(f"min_annotations must be an int >= 0, got {min_annotations!r}")
        if not prefix or prefix.endswith(":"):
            raise ValueError(f"prefix must be a non-empty key prefix without a trailing ':', got {prefix!r}")
        self.connection = connection
        self.queue = Queue(queue_name, connection=connection)
        self.debounce_seconds = float(debounce_seconds)
        self.max_debounce_seconds = float(max_debounce_seconds)
        self.min_annotations = min_annotations
        self.auto_training_enabled = auto_training_enabled
        self.job_overrides = job_overrides
        self.prefix = prefix
        self.job_func = job_func
        self.retry_intervals = tuple(int(i) for i in retry_intervals)
        self.job_settings = {
            **(job_settings or {}),
            "debounce_seconds": self.debounce_seconds,
            "max_debounce_seconds": self.max_debounce_seconds,
            "min_annotations": min_annotations,
            "redis_prefix": prefix,
        }
        self.job_timeout = job_timeout or _default_job_timeout(self.job_settings, job_func)
        self._schedule_script = connection.register_script(SCHEDULE)
        self._release_script = connection.register_script(RELEASE_QUEUED)

    @classmethod
    def from_job(cls, job: Job) -> TrainingScheduler:
        """A scheduler that enqueues the same call as ``job`` did (for the follow-up run)."""
        settings = dict(job.args[1]) if len(job.args) > 1 and isinstance(job.args[1], dict) else {}
        return cls(job.connection, settings, queue_name=job.origin,
                   debounce_seconds=float(settings.get("debounce_seconds", DEFAULT_DEBOUNCE_SECONDS)),
                   max_debounce_seconds=float(settings.get("max_debounce_seconds", 60.0)),
                   min_annotations=int(settings.get("min_annotations", 1)),
                   prefix=str(settings.get("redis_prefix", "samloop")), job_func=job.func_name,
                   job_timeout=job.timeout, retry_intervals=tuple(job.retry_intervals or ()))

    def keys(self, project: str) -> ProjectKeys:
        return ProjectKeys(self.prefix, project_key(project))

    # ----- the webhook side ----------------------------------------------------------------------
    def schedule(self, project: str, action: str, force: bool = False, labeled_tasks: int | None = None) -> dict:
        """Record a training trigger for ``project`` and make sure one job will act on it.

        Returns a JSON-safe dict: ``status`` is ``queued`` (a new job), ``coalesced`` (joined the
        job already waiting) or ``ignored`` (with ``reason``); ``job_id`` names the job.

        Raises:
            RedisUnavailable: Redis cannot be reached (answer 503 so the event isn't lost).
            ValueError: a malformed project id.
        """
        keys = self.keys(project)
        forced = force or action in FORCED_ACTIONS
        if action not in TRAINING_ACTIONS and not forced:
            return {"status": "ignored", "project": project, "action": action,
                    "reason": f"{action} does not change the training data"}
        try:
            enabled = forced or self.auto_training_enabled is None or self.auto_training_enabled(project)
        except redis.RedisError as exc:
            raise RedisUnavailable(
                f"cannot read the settings of project {project}: Redis is unreachable ({exc})"
            ) from exc
        if not enabled:
            log.info("project %s: %s ignored, auto-training is off", project, action)
            return {"status": "ignored", "project": project, "action": action, "reason": "auto-training is off"}
        if labeled_tasks is not None and labeled_tasks < self.min_annotations:
            return {"status": "ignored", "project": project, "action": action,
                    "reason": f"{labeled_tasks} labeled tasks, TRAIN_MIN_ANNOTATIONS is {self.min_annotations}"}
        try:
            created, named = self._point_queued(keys, count_event=True)
            if created:
                self._enqueue(project, named, action)
        except redis.RedisError as exc:
            raise RedisUnavailable(
                f"cannot schedule training for project {project}: Redis is unreachable ({exc})"
            ) from exc
        status = "queued" if created else "coalesced"
        log.info("project %s: %s -> %s job %s", project, action, status, named)
        return {"status": status, "project": project, "action": action, "job_id": named}

    def _point_queued(self, keys: ProjectKeys, count_event: bool) -> tuple[bool, str]:
        """Run the schedule script: (True, new id) when the caller must enqueue it, else (False, queued id)."""
        # rq allows letters, digits, "_" and "-" in a job id: "3.1712345678" becomes "3_1712345678".
        job_id = f"samloop-train-{keys.project.replace('.', '_')}-{uuid.uuid4().hex[:12]}"
        created, named = self._schedule_script(
            keys=[keys.events, keys.last_event, keys.queued, keys.queued_at],
            args=[job_id, Job.redis_job_namespace_prefix, _ENQUEUE_GRACE_SECONDS, 1 if count_event else 0],
        )
        return bool(created), str(text(named))

    def _enqueue(self, project: str, job_id: str, trigger: str) -> None:
        keys = self.keys(project)
        try:
            retry = Retry(max=len(self.retry_intervals), interval=list(self.retry_intervals)) \
                if self.retry_intervals else None
            self.queue.enqueue_call(
                self.job_func, args=(project, self._settings_for(project)), timeout=self.job_timeout, job_id=job_id,
                retry=retry, result_ttl=7 * 86400, failure_ttl=30 * 86400,
                description=f"train the adapter of project {project} ({trigger})",
                meta={"project": project, "stage": "queued", "trigger": trigger},
                # Outcomes are counted on the worker, in Redis, where every backend process reads them.
                on_success=Callback(f"{_STATS}.on_success"), on_failure=Callback(f"{_STATS}.on_failure"),
                on_stopped=Callback(f"{_STATS}.on_stopped"),
            )
        except Exception:
            # Leave no pointer to a job that doesn't exist, or the project's events would wait on it.
            self._release_script(keys=[keys.queued], args=[job_id])
            raise

    def _settings_for(self, project: str) -> dict[str, Any]:
        overrides = self.job_overrides(project) if self.job_overrides is not None else {}
        return {**self.job_settings, **overrides}

    def enqueue_follow_up(self, project: str) -> str | None:
        """Enqueue a job for events that arrived during a run, unless one is already queued."""
        created, job_id = self._point_queued(self.keys(project), count_event=False)
        if not created:
            return None
        self._enqueue(project, job_id, "follow-up")
        return job_id

    # ----- admin controls ---------------------------------------------------------------------------
    def train_now(self, project: str, full: bool = False) -> dict:
        """Queue a run now, whatever the auto-training switch says (the admin console's "train").

        Counted as an event (so the run has something to claim and is not "up to date") without a new
        debounce stamp: the job starts at once, unless annotations arrived in the last few seconds.
        ``full``: the next run retrains from scratch (the request waits in Redis until a run takes it, so
        it survives coalescing with other events). Returns ``schedule``'s answer (``queued`` or
        ``coalesced``, with ``job_id``) and ``full``.
        """
        keys = self.keys(project)
        try:
            if full:
                self.connection.set(keys.full, 1)
            self.connection.incr(keys.events)
            created, named = self._point_queued(keys, count_event=False)
            if created:
                self._enqueue(project, named, ADMIN_TRAIN)
        except redis.RedisError as exc:
            raise RedisUnavailable(f"cannot queue training for project {project}: Redis is unreachable ({exc})"
                                   ) from exc
        status = "queued" if created else "coalesced"
        log.info("project %s: %s -> %s job %s", project, ADMIN_TRAIN, status, named)
        return {"status": status, "project": project, "action": ADMIN_TRAIN, "job_id": named, "full": full}

    def cancel(self, project: str) -> dict:
        """Stop the project's running job and cancel its queued one.

        A running job's work-horse is killed by its worker (rq's stop command); ``job_stats.on_stopped``
        then frees the lock and records the run as cancelled. Nothing is published by a killed job,
        and a publish is atomic, so the active adapter stays what it was. Stopped jobs are not retried.
        Returns ``{"status": "cancelled" | "nothing_to_cancel", "stopped": [...], "cancelled": [...]}``.
        """
        keys = self.keys(project)
        queued, running = (text(v) for v in self.connection.mget(keys.queued, keys.lock))
        stopped, cancelled = [], []
        for job_id in dict.fromkeys(j for j in (running, queued) if j):
            job = self._fetch(job_id)
            status = job.get_status(refresh=False) if job is not None else None
            if status == JobStatus.STARTED:
                try:
                    send_stop_job_command(self.connection, job_id)
                    stopped.append(job_id)
                except (InvalidJobOperation, NoSuchJobError) as exc:
                    log.warning("project %s: cannot stop job %s: %s", project, job_id, exc)
            elif status in _WAITING:
                job.cancel()
                cancelled.append(job_id)
                job_stats.record_outcome(self.connection, self.prefix, "cancelled", 0.0)
        if queued:
            self._release_script(keys=[keys.queued], args=[queued])
        done = stopped + cancelled
        log.info("project %s: admin cancel: stopped %s, cancelled %s", project, stopped or "none", cancelled or "none")
        return {"status": "cancelled" if done else "nothing_to_cancel", "project": project, "stopped": stopped,
                "cancelled": cancelled}

    def current_job(self, project: str) -> dict | None:
        """The project's running job, else its waiting one: id, rq status, times and progress meta."""
        keys = self.keys(project)
        for job_id in (text(v) for v in self.connection.mget(keys.lock, keys.queued)):
            job = self._fetch(job_id) if job_id else None
            status = job.get_status(refresh=False) if job is not None else None
            if status in _LIVE:
                return {**job.get_meta(refresh=False), "job_id": job_id, "status": status.value,
                        "enqueued_at": _stamp(job.enqueued_at), "started_at": _stamp(job.started_at)}
        return None

    def job_meta(self, job_id: str) -> dict | None:
        """A (possibly ended) job's progress meta, or None once rq has expired it."""
        job = self._fetch(job_id)
        return job.get_meta(refresh=False) if job is not None else None

    def _fetch(self, job_id: str) -> Job | None:
        try:
            return Job.fetch(job_id, connection=self.connection)
        except NoSuchJobError:
            return None

    # ----- status for the backend / admins -------------------------------------------------------------
    def status(self, project: str) -> dict:
        """Queued and running job ids, the running job's progress, and the last run's outcome."""
        keys = self.keys(project)
        queued, running, last = self.connection.mget(keys.queued, keys.lock, keys.last_run)
        out: dict[str, Any] = {"project": project, "queued_job": text(queued), "running_job": text(running),
                               "progress": None, "last_run": None}
        if running:
            try:
                out["progress"] = Job.fetch(text(running), connection=self.connection).get_meta(refresh=False)
            except Exception:  # the job hash may have expired; progress is best effort
                out["progress"] = None
        if last:
            out["last_run"] = json.loads(last)
        return out


def _stamp(value: Any) -> float | None:
    """An rq datetime (naive UTC) as unix seconds."""
    if value is None:
        return None
    return value.replace(tzinfo=value.tzinfo or UTC).timestamp()


def _default_job_timeout(settings: dict[str, Any], job_func: str) -> int:
    if job_func == DEFAULT_JOB:
        # Empty values are left to each worker's own environment (JobSettings.resolve).
        return JobSettings.from_dict({k: v for k, v in settings.items() if v != ""}).job_timeout()
    # Another job function (a test's stand-in) takes its own settings: room for the debounce and some work.
    return int(settings.get("max_debounce_seconds", 60)) + 600
