"""The job's half of the training protocol: ``ProjectRun`` (see ``training.jobs.scheduler`` for the whole).

A job waits until the project's events have settled, claims them together with the project's
lock, keeps the lock alive while it trains, and on finishing marks the claimed events done and
enqueues the one follow-up run that events during the run call for.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import redis

from training.jobs.keys import CLAIM, FINISH, REFRESH, ProjectKeys, text
from training.jobs.scheduler import TrainingScheduler
from training.labelstudio.projects import project_key

__all__ = ["ProjectRun"]

log = logging.getLogger(__name__)


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
        self.keys = ProjectKeys(prefix, project_key(project))
        self.prefix = prefix
        self.project = project
        self.job_id = job_id
        self.debounce_seconds = debounce_seconds
        self.max_debounce_seconds = max_debounce_seconds
        self.lock_ttl_ms = int(lock_ttl_seconds * 1000)
        self.claimed_events = 0
        self.outcome: dict[str, Any] = {}
        self._sleep = sleep
        self._claim = connection.register_script(CLAIM)
        self._refresh = connection.register_script(REFRESH)
        self._finish = connection.register_script(FINISH)

    def wait_for_quiet(self, on_wait: Callable[[float], None] | None = None) -> float:
        """Sleep until no event came for ``debounce_seconds`` (bounded); returns seconds waited."""
        start = time.monotonic()
        while True:
            last = float(text(self.connection.get(self.keys.last_event)) or 0.0)
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
        claimed = self._claim(keys=[self.keys.queued, self.keys.events, self.keys.done, self.keys.lock,
                                    self.keys.claimed_at],
                              args=[self.job_id, self.lock_ttl_ms])
        if not claimed[0]:
            holder = text(self.connection.get(self.keys.lock))
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

    def take_full_request(self) -> bool:
        """Whether a retrain from scratch was asked for; the request is this run's from now on."""
        return bool(self.connection.getdel(self.keys.full))

    def request_full(self) -> None:
        """Ask again for a retrain from scratch (this run failed before it could do it)."""
        with suppress(redis.RedisError):
            self.connection.set(self.keys.full, 1)

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
        return bool(self._finish(keys=[self.keys.lock, self.keys.done, self.keys.events, self.keys.queued,
                                       self.keys.claimed_at, self.keys.covered_until],
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
