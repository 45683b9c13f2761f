"""The backend under test as a real subprocess, and resident-memory sampling of its process tree.

Memory comes from ``/proc/<pid>/status``: ``VmHWM`` (the kernel's peak resident set of a process)
and ``VmRSS`` sampled every ``interval`` seconds. Processes are grouped by role: the backend
itself, the training worker (``python -m training.jobs.worker``) with its forked job processes, and
the embedded Redis.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.machine import REPO

KB_PER_MB = 1024


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM and RssFile of a process in kB (empty when it is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:", "RssFile:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return out


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                kids += [int(x) for x in fh.read().split()]
        except (OSError, ValueError):
            continue
    return kids


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def descendants(root: int) -> list[tuple[int, int]]:
    """(pid, parent pid) of every process below ``root``."""
    found: list[tuple[int, int]] = []
    stack = [root]
    while stack:
        parent = stack.pop()
        for child in _children(parent):
            found.append((child, parent))
            stack.append(child)
    return found


@dataclass
class _Seen:
    role: str
    peak_kb: int = 0  # VmHWM, the kernel's own high-water mark
    sampled_max_kb: int = 0  # max VmRSS we sampled (for phases)
    # Of that sample, file-backed pages (mostly shared libraries: clean, reclaimable, and ~400 MB
    # of them belong to the CUDA build of torch, which the CPU build does not map).
    file_at_max_kb: int = 0


@dataclass
class MemorySampler:
    """Polls a process tree's resident memory in a background thread."""

    root: int
    interval: float = 0.1
    seen: dict[int, _Seen] = field(default_factory=dict)
    _phase_max: dict[str, dict[str, int]] = field(default_factory=dict)
    _phase: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _role(self, pid: int, parent: int) -> str:
        if pid == self.root:
            return "backend"
        cmd = _cmdline(pid)
        if "redis-server" in cmd:
            return "redis"
        if "training.jobs.worker" in cmd:
            parent_role = self.seen.get(parent)
            return "worker_job" if parent_role is not None and parent_role.role.startswith("worker") else "worker"
        return "other"

    def sample(self) -> None:
        pids = [(self.root, 0), *descendants(self.root)]
        with self._lock:
            for pid, parent in pids:
                status = _status(pid)
                if not status:
                    continue
                seen = self.seen.get(pid)
                if seen is None:
                    seen = self.seen[pid] = _Seen(self._role(pid, parent))
                seen.peak_kb = max(seen.peak_kb, status.get("VmHWM", 0))
                rss = status.get("VmRSS", 0)
                if rss > seen.sampled_max_kb:
                    seen.sampled_max_kb, seen.file_at_max_kb = rss, status.get("RssFile", 0)
                if self._phase is not None:
                    phase = self._phase_max.setdefault(self._phase, {})
                    phase[seen.role] = max(phase.get(seen.role, 0), rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def start(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sample()

    def phase(self, name: str | None) -> None:
        """Attribute the following samples' RSS to phase ``name`` (None: no phase)."""
        self.sample()
        with self._lock:
            self._phase = name
        self.sample()

    def current_rss_mb(self, role: str = "backend") -> float:
        total = sum(_status(pid).get("VmRSS", 0) for pid, seen in list(self.seen.items()) if seen.role == role)
        return round(total / KB_PER_MB, 1)

    def summary(self) -> dict:
        """Peak RSS per role in MB: ``peak_rss_mb`` is the largest single process's VmHWM of that role."""
        with self._lock:
            roles: dict[str, dict] = {}
            for seen in self.seen.values():
                entry = roles.setdefault(seen.role, {"processes": 0, "peak_rss_mb": 0.0,
                                                     "file_backed_at_sampled_peak_mb": 0.0})
                entry["processes"] += 1
                entry["peak_rss_mb"] = max(entry["peak_rss_mb"], round(seen.peak_kb / KB_PER_MB, 1))
                entry["file_backed_at_sampled_peak_mb"] = max(entry["file_backed_at_sampled_peak_mb"],
                                                              round(seen.file_at_max_kb / KB_PER_MB, 1))
            phases = {name: {role: round(kb / KB_PER_MB, 1) for role, kb in values.items()}
                      for name, values in self._phase_max.items()}
        return {"roles": roles, "phase_max_rss_mb": phases}


class BackendProcess:
    """``python -m backend`` on a free port with the given environment; logs to ``log_path``."""

    def __init__(self, env: Mapping[str, str], log_path: Path, startup_timeout: float = 300.0) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.sampler: MemorySampler | None = None
        self.startup_seconds: float | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> BackendProcess:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        started = time.perf_counter()
        command = [sys.executable, "-m", "backend", "--host", "127.0.0.1", "--port", str(self.port)]
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        self.sampler = MemorySampler(self.process.pid).start()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"backend exited with {self.process.returncode} during startup; "
                                   f"log: {self.log_path}\n{self.tail()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    self.startup_seconds = round(time.perf_counter() - started, 2)
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"backend did not answer /health within {self.startup_timeout} s; log: {self.log_path}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> dict:
        """SIGTERM (the backend stops its worker and Redis), then kill the group after a timeout."""
        summary: dict = {}
        if self.sampler is not None:
            self.sampler.stop()
            summary = self.sampler.summary()
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return summary

    def __enter__(self) -> BackendProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
