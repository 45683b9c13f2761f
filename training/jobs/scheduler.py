"""Turn Label Studio events into training jobs: debounced, coalesced, one run at a time per project.

Both sides of the protocol live here: ``TrainingScheduler.schedule`` (called from the webhook, one
Redis script and at most one enqueue, so it returns in milliseconds) and ``ProjectRun`` (used by
the job to wait out the burst, claim the events, hold the project's lock, and finish).

Per project (keys ``<prefix>:train:<project>:*``):

- ``events``: a counter bumped by every accepted event; ``last_event``: when the last one came.
- ``queued``: the id of the job that will see the next events (at most one). ``schedule`` makes
  a new job only when there is none, or the one named has ended (finished, failed, stopped,
  gone); otherwise the event coalesces into it.
- ``lock``: held (with a TTL refreshed by a heartbeat thread) by the job that is training. A job
  claims the events (``queued`` cleared, ``events`` read) and the lock in one script.
- ``done``: the event count covered by the last run that ended normally. A run that ends with
  ``events > claimed`` and nothing queued enqueues the single follow-up itself.

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
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue, Retry
from rq.job import Job

__all__ = [
    "DEFAULT_QUEUE",
    "TRAINING_ACTIONS",
    "ProjectKeys",
    "ProjectRun",
    "SchedulerUnavailable",
    "TrainingScheduler",
]

log = logging.getLogger(__name__)

DEFAULT_QUEUE = "samloop-training"
DEFAULT_JOB = "training.jobs.training_job.run_training_job"
TRAINING_ACTIONS = frozenset(
    {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED", "START_TRAINING"}
)
FORCED_ACTIONS = frozenset({"START_TRAINING"})
# Job states in which a queued job will still claim events (rq's status strings).
_LIVE_STATES = ("queued", "started", "scheduled", "deferred")
# A job id written to ``queued`` whose rq hash isn't saved yet is being enqueued right now.
_ENQUEUE_GRACE_SECONDS = 30


class SchedulerUnavailable(redis.exceptions.ConnectionError):
    """Redis (the training queue) cannot be reached: the webhook should answer 503."""


@dataclass(frozen=True)
class ProjectKeys:
    prefix: str
    project: str

    def key(self, name: str) -> str:
        return f"{self.prefix}:train:{self.project}:{name}"

    @property
    def events(self) -> str:
        return self.key("events")

    @property
    def last_event(self) -> str:
        return self.key("last_event")

    @property
    def queued(self) -> str:
        return self.key("queued")

    @property
    def queued_at(self) -> str:
        return self.key("queued_at")

    @property
    def lock(self) -> str:
        return self.key("lock")

    @property
    def done(self) -> str:
        return self.key("done")

    @property
    def last_run(self) -> str:
        return self.key("last_run")


# KEYS: events, last_event, queued, queued_at   ARGV: (unused), new job id, rq job key prefix, grace, count(0/1)
# Returns {1, id} when the caller must enqueue job `id`, {0, id} when the event joined queued job `id`.
# Times come from Redis' clock, which backend and workers on other machines share.
_SCHEDULE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if ARGV[5] == '1' then
  redis.call('INCR', KEYS[1])
  redis.call('SET', KEYS[2], string.format('%.6f', now))
end
local queued = redis.call('GET', KEYS[3])
if queued then
  local status = redis.call('HGET', ARGV[3] .. queued, 'status')
  if status == 'queued' or status == 'started' or status == 'scheduled' or status == 'deferred' then
    return {0, queued}
  end
  if not status then
    local at = tonumber(redis.call('GET', KEYS[4]) or '0')
    if now - at < tonumber(ARGV[4]) then
      return {0, queued}
    end
  end
end
redis.call('SET', KEYS[3], ARGV[2])
redis.call('SET', KEYS[4], string.format('%.6f', now))
return {1, ARGV[2]}
"""

# KEYS: queued, events, done, lock   ARGV: job id, lock ttl ms
# {0} when another job holds the lock (this job steps aside and stops being the queued one);
# {1, events, done} when this job now holds the lock and has claimed the events so far.
_CLAIM = """
local holder = redis.call('GET', KEYS[4])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
if holder and holder ~= ARGV[1] then
  return {0}
end
redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[2])
return {1, tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(redis.call('GET', KEYS[3]) or '0')}
"""

# KEYS: lock   ARGV: job id, ttl ms
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lock, done, events, queued   ARGV: job id, claimed events, mark done (0/1)
# Returns 1 when events arrived during the run and no job is queued for them (a follow-up is due).
_FINISH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
if ARGV[3] == '1' then
  local done = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tonumber(ARGV[2]) > done then
    redis.call('SET', KEYS[2], ARGV[2])
  end
end
local events = tonumber(redis.call('GET', KEYS[3]) or '0')
if events > tonumber(ARGV[2]) and not redis.call('GET', KEYS[4]) then
  return 1
end
return 0
"""


class TrainingScheduler:
    """Enqueue training for a project from webhook events.

    Args:
        connection: a ``redis.Redis`` with ``decode_responses=False`` (rq's requirement).
        job_settings: JSON-safe dict handed to every job (see ``training.jobs.training_job.JobSettings``).
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
    """

    def __init__(self, connection: redis.Redis, job_settings: dict[str, Any] | None = None,
                 queue_name: str = DEFAULT_QUEUE, debounce_seconds: float = 5.0,
                 max_debounce_seconds: float = 60.0, min_annotations: int = 1,
                 auto_training_enabled: Callable[[str], bool] | None = None, prefix: str = "samloop",
                 job_func: str = DEFAULT_JOB, job_timeout: int | None = None,
                 retry_intervals: tuple[int, ...] = (30, 120)) -> None:
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
        self._schedule_script = connection.register_script(_SCHEDULE)

    @classmethod
    def from_job(cls, job: Job) -> TrainingScheduler:
        """A scheduler that enqueues the same call as ``job`` did (for the follow-up run)."""
        settings = dict(job.args[1]) if len(job.args) > 1 and isinstance(job.args[1], dict) else {}
        return cls(job.connection, settings, queue_name=job.origin,
                   debounce_seconds=float(settings.get("debounce_seconds", 5.0)),
                   max_debounce_seconds=float(settings.get("max_debounce_seconds", 60.0)),
                   min_annotations=int(settings.get("min_annotations", 1)),
                   prefix=str(settings.get("redis_prefix", "samloop")), job_func=job.func_name,
                   job_timeout=job.timeout, retry_intervals=tuple(job.retry_intervals or ()))

    def keys(self, project: str) -> ProjectKeys:
        return ProjectKeys(self.prefix, _check_project(project))

    # ----- the webhook side ----------------------------------------------------------------------
    def schedule(self, project: str, action: str, force: bool = False, labeled_tasks: int | None = None) -> dict:
        """Record a training trigger for ``project`` and make sure one job will act on it.

        Returns a JSON-safe dict: ``status`` is ``queued`` (a new job), ``coalesced`` (joined the
        job already waiting) or ``ignored`` (with ``reason``); ``job_id`` names the job.

        Raises:
            SchedulerUnavailable: Redis cannot be reached (answer 503 so the event isn't lost).
            ValueError: a malformed project id.
        """
        keys = self.keys(project)
        forced = force or action in FORCED_ACTIONS
        if action not in TRAINING_ACTIONS and not force:
            return {"status": "ignored", "project": project, "action": action,
                    "reason": f"{action} does not change the training data"}
        try:
            enabled = forced or self.auto_training_enabled is None or self.auto_training_enabled(project)
        except redis.RedisError as exc:
            raise SchedulerUnavailable(
                f"cannot read the settings of project {project}: Redis is unreachable ({exc})"
            ) from exc
        if not enabled:
            log.info("project %s: %s ignored, auto-training is off", project, action)
            return {"status": "ignored", "project": project, "action": action, "reason": "auto-training is off"}
        if labeled_tasks is not None and labeled_tasks < self.min_annotations:
            return {"status": "ignored", "project": project, "action": action,
                    "reason": f"{labeled_tasks} labeled tasks, TRAIN_MIN_ANNOTATIONS is {self.min_annotations}"}
        job_id = f"samloop-train-{project}-{uuid.uuid4().hex[:12]}"
        try:
            created, named = self._schedule_script(
                keys=[keys.events, keys.last_event, keys.queued, keys.queued_at],
                args=[0, job_id, Job.redis_job_namespace_prefix, _ENQUEUE_GRACE_SECONDS, 1],
            )
            named = named.decode() if isinstance(named, bytes) else str(named)
            if created:
                self._enqueue(project, named, action)
        except redis.RedisError as exc:
            raise SchedulerUnavailable(
                f"cannot schedule training for project {project}: Redis is unreachable ({exc})"
            ) from exc
        status = "queued" if created else "coalesced"
        log.info("project %s: %s -> %s job %s", project, action, status, named)
        return {"status": status, "project": project, "action": action, "job_id": named}

    def _enqueue(self, project: str, job_id: str, trigger: str) -> None:
        keys = self.keys(project)
        try:
            retry = Retry(max=len(self.retry_intervals), interval=list(self.retry_intervals)) \
                if self.retry_intervals else None
            self.queue.enqueue_call(
                self.job_func, args=(project, self.job_settings), timeout=self.job_timeout, job_id=job_id,
                retry=retry, result_ttl=7 * 86400, failure_ttl=30 * 86400,
                description=f"train the adapter of project {project} ({trigger})",
                meta={"project": project, "stage": "queued", "trigger": trigger},
            )
        except Exception:
            # Leave no pointer to a job that doesn't exist, or the project's events would wait on it.
            self.connection.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end",
                                 1, keys.queued, job_id)
            raise

    def enqueue_follow_up(self, project: str) -> str | None:
        """Enqueue a job for events that arrived during a run, unless one is already queued."""
        keys = self.keys(project)
        job_id = f"samloop-train-{project}-{uuid.uuid4().hex[:12]}"
        created, named = self._schedule_script(
            keys=[keys.events, keys.last_event, keys.queued, keys.queued_at],
            args=[0, job_id, Job.redis_job_namespace_prefix, _ENQUEUE_GRACE_SECONDS, 0],
        )
        if not created:
            return None
        self._enqueue(project, job_id, "follow-up")
        return job_id

    # ----- status for the backend / admins -------------------------------------------------------------
    def status(self, project: str) -> dict:
        """Queued and running job ids, the running job's progress, and the last run's outcome."""
        keys = self.keys(project)
        queued, running, last = self.connection.mget(keys.queued, keys.lock, keys.last_run)
        out: dict[str, Any] = {"project": project, "queued_job": _text(queued), "running_job": _text(running),
                               "progress": None, "last_run": None}
        if running:
            try:
                out["progress"] = Job.fetch(_text(running), connection=self.connection).get_meta(refresh=False)
            except Exception:  # the job hash may have expired; progress is best effort
                out["progress"] = None
        if last:
            out["last_run"] = json.loads(last)
        return out


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _check_project(project: str) -> str:
    if not isinstance(project, str) or not project or len(project) > 128 or any(c in project for c in " :*?[]{}"):
        raise ValueError(f"project must be a non-empty id without spaces, ':' or glob characters, got {project!r}")
    return project


def _default_job_timeout(settings: dict[str, Any], job_func: str) -> int:
    if job_func == DEFAULT_JOB:
        from training.jobs.training_job import JobSettings  # heavy (torch); only when the real job is used

        # Empty values are left to each worker's own environment (JobSettings.resolve).
        return JobSettings.from_dict({k: v for k, v in settings.items() if v != ""}).job_timeout()
    return int(settings.get("max_debounce_seconds", 60)) + 600


# ----- the job side ------------------------------------------------------------------------------------


class ProjectRun:
    """The job's half of the protocol. Use as::

        run = ProjectRun(connection, prefix, project, job_id, debounce, max_debounce)
        if not run.begin(on_wait):      # waits out the burst, claims events and the lock
            return run.outcome          # another job is training it / nothing new
        with run.holding():             # lock heartbeat; on exception: lock released, events not done
            ...train...
        run.finish(result)              # events done; follow-up enqueued if more arrived
    """

    def __init__(self, connection: redis.Redis, prefix: str, project: str, job_id: str,
                 debounce_seconds: float = 5.0, max_debounce_seconds: float = 60.0,
                 lock_ttl_seconds: float = 60.0, sleep: Callable[[float], None] = time.sleep) -> None:
        self.connection = connection
        self.keys = ProjectKeys(prefix, _check_project(project))
        self.prefix = prefix
        self.project = project
        self.job_id = job_id
        self.debounce_seconds = debounce_seconds
        self.max_debounce_seconds = max_debounce_seconds
        self.lock_ttl_ms = int(lock_ttl_seconds * 1000)
        self.claimed_events = 0
        self.outcome: dict[str, Any] = {}
        self._sleep = sleep
        self._claim = connection.register_script(_CLAIM)
        self._refresh = connection.register_script(_REFRESH)
        self._finish = connection.register_script(_FINISH)

    def wait_for_quiet(self, on_wait: Callable[[float], None] | None = None) -> float:
        """Sleep until no event came for ``debounce_seconds`` (bounded); returns seconds waited."""
        start = time.monotonic()
        while True:
            last = float(_text(self.connection.get(self.keys.last_event)) or 0.0)
            seconds, micros = self.connection.time()  # the clock the events were stamped with
            quiet = seconds + micros / 1e6 - last
            waited = time.monotonic() - start
            if quiet >= self.debounce_seconds or waited >= self.max_debounce_seconds:
                return waited
            if on_wait is not None:
                on_wait(self.debounce_seconds - quiet)
            self._sleep(min(self.debounce_seconds - quiet, self.max_debounce_seconds - waited, 1.0) + 0.01)

    def begin(self, on_wait: Callable[[float], None] | None = None) -> bool:
        """Debounce, then claim. False (with ``outcome`` set) when this job has nothing to do."""
        self.wait_for_quiet(on_wait)
        claimed = self._claim(keys=[self.keys.queued, self.keys.events, self.keys.done, self.keys.lock],
                              args=[self.job_id, self.lock_ttl_ms])
        if not claimed[0]:
            holder = _text(self.connection.get(self.keys.lock))
            # The running job enqueues the follow-up when it ends (nothing is queued any more).
            self.outcome = {"status": "deferred", "project": self.project,
                            "reason": f"job {holder} is training this project; it will schedule the follow-up"}
            return False
        self.claimed_events, done = int(claimed[1]), int(claimed[2])
        if self.claimed_events <= done and self.claimed_events > 0:
            self.outcome = {"status": "up_to_date", "project": self.project,
                            "reason": "every event was covered by an earlier run"}
            self._finish_script(mark_done=False, claimed=self.claimed_events)
            return False
        return True

    def refresh_lock(self) -> bool:
        return bool(self._refresh(keys=[self.keys.lock], args=[self.job_id, self.lock_ttl_ms]))

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Keep the lock alive while the body runs. If the body raises: the failure is recorded in
        ``last_run``, the lock released and the events left "not done" for the retry."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.lock_ttl_ms / 3000):
                try:
                    if not self.refresh_lock():
                        log.warning("project %s: lost the training lock (expired?)", self.project)
                except redis.RedisError as exc:
                    log.warning("project %s: cannot refresh the training lock: %s", self.project, exc)

        thread = threading.Thread(target=beat, name=f"samloop-lock-{self.project}", daemon=True)
        thread.start()
        try:
            yield
        except BaseException as exc:
            stop.set()
            self.record_failure(f"{type(exc).__name__}: {exc}")
            with suppress(redis.RedisError):  # else the lock's TTL frees it
                self._finish_script(mark_done=False, claimed=self.claimed_events)
            raise
        finally:
            stop.set()
            thread.join(timeout=5)

    def _finish_script(self, mark_done: bool, claimed: int) -> bool:
        return bool(self._finish(keys=[self.keys.lock, self.keys.done, self.keys.events, self.keys.queued],
                                 args=[self.job_id, claimed, 1 if mark_done else 0]))

    def finish(self, outcome: dict[str, Any], scheduler: TrainingScheduler | None = None) -> str | None:
        """Mark the claimed events done, record ``outcome``, release the lock, enqueue a follow-up if due."""
        self.outcome = outcome
        self.connection.set(self.keys.last_run, json.dumps({**outcome, "job_id": self.job_id,
                                                            "finished_at": time.time()}))
        due = self._finish_script(mark_done=True, claimed=self.claimed_events)
        if due and scheduler is not None:
            follow_up = scheduler.enqueue_follow_up(self.project)
            if follow_up:
                log.info("project %s: events arrived during the run; follow-up job %s queued", self.project,
                         follow_up)
            return follow_up
        return None

    def record_failure(self, error: str) -> None:
        """Make a failed run visible in ``status()`` (the rq job also records it)."""
        with suppress(redis.RedisError):
            self.connection.set(self.keys.last_run, json.dumps({
                "status": "failed", "project": self.project, "error": error[:2000], "job_id": self.job_id,
                "finished_at": time.time()}))
