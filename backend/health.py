"""What /health, /metrics and the admin console say about Redis and the training worker.

A thread checks both every second, so that /health (Label Studio gives it one second) answers from
memory and never waits on a Redis that does not answer:

- Redis: a PING on a client of its own without retries (the services' clients back off for seconds).
- The worker: with the embedded Redis, the supervised worker process is alive; in every case rq
  lists at least one worker on the training queue. A worker on another machine that died stays listed
  until its rq registration expires (rq's worker TTL, minutes): that is as soon as Redis can tell.

When Redis comes back after an outage the ``on_redis_back`` callbacks run (the recovery of missed
events), in this thread, one after the other.

Decision: /health answers 200 while Redis or the worker is down, with ``"status": "DEGRADED"`` and the
problems in the body. Label Studio marks a model whose /health is not 200 as failing, yet predictions
and clicks keep working through such an outage (the adapters are in memory or on disk, the switches
last read are kept): a non-200 would take away what still works. ``/health?strict=true`` answers 503
instead, for container health checks and load balancers that should act on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue, Worker

from backend.metrics import REDIS_UP, TRAINING_WORKER_UP, TRAINING_WORKERS
from training.jobs.embedded import EmbeddedTraining
from training.jobs.redis_conn import RedisHandle

__all__ = ["HealthMonitor", "Reading"]

log = logging.getLogger(__name__)


@dataclass
class Reading:
    """One check of one dependency; ``since``: unix time the current state began."""

    ok: bool = True
    error: str | None = None
    since: float = field(default_factory=time.time)


class HealthMonitor:
    """Checks Redis and the training worker every ``interval`` s in a thread.

    Args:
        handle: the backend's Redis (its URL; its embedded server, if any, for the restart count).
        queue_name: the training queue a worker must listen on; None when no rq pipeline is connected
            (a stand-in scheduler in tests): the worker is then not checked.
        worker: returns the embedded worker supervisor, if this backend runs one.
    """

    def __init__(self, handle: RedisHandle, queue_name: str | None,
                 worker: Callable[[], EmbeddedTraining | None] = lambda: None, interval: float = 1.0) -> None:
        self.handle = handle
        self.queue_name = queue_name
        self.worker = worker
        self.interval = interval
        self.redis = Reading()
        self.training = Reading()
        self.workers = 0
        self.on_redis_back: list[Callable[[], None]] = []
        self._probe = redis.Redis.from_url(handle.url, socket_timeout=1, socket_connect_timeout=1,
                                           retry=Retry(NoBackoff(), 0))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="samloop-health", daemon=True)

    def start(self) -> HealthMonitor:
        self.check()
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._probe.close()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # the monitor must outlive any one bad check
                log.exception("health check failed")

    # ----- checks -----
    def check(self) -> None:
        """Check both now; runs the ``on_redis_back`` callbacks when Redis has just come back."""
        came_back = self._set(self.redis, *self._check_redis(), "Redis")
        workers, problem = self._check_worker() if self.redis.ok else (0, "unknown while Redis is unreachable")
        self.workers = workers
        self._set(self.training, problem is None, problem, "training worker")
        REDIS_UP.set(1 if self.redis.ok else 0)
        TRAINING_WORKER_UP.set(1 if self.training.ok else 0)
        TRAINING_WORKERS.set(workers)
        if came_back:
            for callback in list(self.on_redis_back):
                try:
                    callback()
                except Exception:
                    log.exception("after Redis came back: %s failed", getattr(callback, "__name__", callback))

    def _set(self, reading: Reading, ok: bool, error: str | None, what: str) -> bool:
        """Record a check; True when it turns from down to up."""
        with self._lock:
            changed = ok != reading.ok
            reading.error = error
            if changed:
                reading.ok, reading.since = ok, time.time()
        if changed and ok:
            log.warning("%s is available again", what)
        elif changed:
            log.error("%s is unavailable: %s", what, error)
        return changed and ok

    def _check_redis(self) -> tuple[bool, str | None]:
        try:
            self._probe.ping()
            return True, None
        except redis.RedisError as exc:
            return False, f"Redis at {self.handle.url} does not answer: {type(exc).__name__}: {exc}"

    def _check_worker(self) -> tuple[int, str | None]:
        if self.queue_name is None:
            return 0, None
        embedded = self.worker()
        try:
            workers = Worker.count(queue=Queue(self.queue_name, connection=self._probe))
        except redis.RedisError as exc:
            return 0, f"cannot list training workers: {exc}"
        if embedded is not None and embedded.worker_pid is None:
            return workers, "the embedded training worker process is not running (it is restarted with back-off)"
        if workers == 0:
            return 0, f"no training worker listens on the queue {self.queue_name!r}: annotations queue up untrained"
        return workers, None

    # ----- what is shown -----
    def report(self) -> dict[str, Any]:
        """``{"status": "UP" | "DEGRADED", "problems": [...], "redis": {...}, "training_worker": {...}}``."""
        with self._lock:
            redis_state, worker_state = asdict(self.redis), asdict(self.training)
        server = self.handle.server
        redis_state.update(embedded=self.handle.embedded, restarts=server.restarts if server is not None else None)
        worker_state.update(checked=self.queue_name is not None, workers=self.workers, queue=self.queue_name)
        problems = [state["error"] for state in (redis_state, worker_state) if not state["ok"] and state["error"]]
        return {"status": "UP" if not problems else "DEGRADED", "problems": problems, "redis": redis_state,
                "training_worker": worker_state}
