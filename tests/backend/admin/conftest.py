"""Fixtures for the admin console: a live backend (uvicorn on a loopback port) with ADMIN_TOKEN set, a
real rq ``TrainingScheduler`` on the shared Redis, and a real fork worker running the stand-in job.

The queue name is unique per module (rq's own keys cannot be prefixed on the shared Redis); project
ids come from the ``project`` fixture so tests in a module never share a project.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from backend.app import create_app
from testkit.waiting import wait_for  # noqa: F401 - re-exported for the admin tests
from tests.backend.conftest import REDIS_URL, make_settings
from training.jobs.scheduler import TrainingScheduler
from training.registry import LocalRegistry

REPO = Path(__file__).resolve().parents[3]
TOKEN = "admin-test-token-7f3a"
FAKE_JOB = "tests.backend.admin.fake_job.fake_training_job"


@dataclass
class LiveBackend:
    url: str
    app: Any
    registry: LocalRegistry
    queue: str
    # Per-project job settings (e.g. a slow job for the cancel test), read when a job is queued.
    job_overrides: dict[str, dict] = field(default_factory=dict)

    @property
    def services(self) -> Any:
        return self.app.state.services

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def serve(app: Any) -> tuple[str, callable]:
    """Run ``app`` under uvicorn in a thread; returns its URL and a stop function."""
    sock = _free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the backend did not start")
        time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


def start_live_backend(data_dir: Path, prefix: str, **overrides: Any) -> tuple[LiveBackend, callable]:
    settings = make_settings(data_dir, prefix, ADMIN_TOKEN=TOKEN, **overrides)
    registry = LocalRegistry(data_dir / "adapters")
    queue = f"samloop-admin-test-{uuid.uuid4().hex[:8]}"
    live = LiveBackend("", None, registry, queue)

    def scheduler_factory(handle, backend_settings) -> TrainingScheduler:
        return TrainingScheduler(handle.client, {"registry_dir": str(registry.root)}, queue_name=queue,
                                 debounce_seconds=0.0, max_debounce_seconds=1.0, prefix=prefix, job_func=FAKE_JOB,
                                 retry_intervals=(), job_overrides=lambda project: live.job_overrides.get(project, {}))

    live.app = create_app(settings, registry=registry, scheduler_factory=scheduler_factory)
    live.url, stop = serve(live.app)
    return live, stop


def start_worker(queue: str) -> subprocess.Popen:
    """A fork worker (the default class: a stop command kills its work-horse) on ``queue``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "training.jobs.worker", "--url", REDIS_URL, "--queues", queue,
                             "--worker-class", "fork", "--log-level", "WARNING", "--no-scheduler"], cwd=REPO, env=env)


@pytest.fixture(scope="module")
def live(tmp_path_factory, module_redis_prefix: str) -> Iterator[LiveBackend]:
    backend, stop = start_live_backend(tmp_path_factory.mktemp("admin"), module_redis_prefix)
    yield backend
    stop()


@pytest.fixture(scope="module")
def worker(live: LiveBackend) -> Iterator[subprocess.Popen]:
    process = start_worker(live.queue)
    yield process
    stop_worker(process)


def stop_worker(process: subprocess.Popen) -> None:
    """rq's warm shutdown waits for the running job; a second SIGTERM is its cold shutdown, which kills
    the work-horse too (a plain SIGKILL of the worker would leave the horse running its job)."""
    process.terminate()
    for _ in range(2):
        try:
            process.wait(timeout=3)
            return
        except subprocess.TimeoutExpired:
            process.terminate()
    process.kill()
    process.wait(timeout=10)


