"""`RedisRegistry`: adapter versions in Redis, so a worker on another machine can publish and
the backend can read without a shared filesystem (adapters are ~240 KB).

Keys (`P` = prefix, `p` = project id):

    P:projects              set of project ids with versions
    P:project:p:counter     last allocated version number (INCR)
    P:project:p:versions    sorted set of stored version numbers
    P:project:p:v:N         hash {weights: bytes, info: JSON {version, created, metadata, uid}}
    P:project:p:active      active version number

A publish is one MULTI/EXEC transaction (INCR, the version hash, the index, the active pointer
and retention deletes) under WATCH of the counter, index and pointer, retried on conflict: a
reader sees all of it or none of it, version numbers and commit order agree, and a crashed
publisher leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from training.registry.base import (
    AdapterRegistry,
    RegistryError,
    VersionInfo,
    check_artifact,
    check_keep_last,
    check_project,
    check_version,
    project_sort_key,
    retention_victims,
)

__all__ = ["RedisRegistry"]

# Optimistic transactions retry on conflicting writers; this many conflicts in a row is a bug.
MAX_ATTEMPTS = 200


def _escape_glob(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


class RedisRegistry(AdapterRegistry):
    """Adapter registry in Redis.

    Args:
        client: a `redis.Redis` created with `decode_responses=False` (weights are bytes).
        prefix: namespace for all keys.
        keep_last: versions kept per project (the active one is always kept).
        cache_dir: optional directory caching loaded weights on local disk, keyed by project,
            version and a per-publication uid (so a deleted and re-created project can't serve
            stale weights).
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "samloop",
        keep_last: int = 10,
        cache_dir: str | Path | None = None,
    ) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisRegistry needs a client with decode_responses=False (weights are bytes)")
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
        self.client = client
        self.prefix = prefix
        self.keep_last = check_keep_last(keep_last)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None

    @classmethod
    def from_url(
        cls, url: str, prefix: str = "samloop", keep_last: int = 10, cache_dir: str | Path | None = None
    ) -> RedisRegistry:
        """Connect with `redis.Redis.from_url` (redis://, rediss://, unix://)."""
        return cls(redis.Redis.from_url(url), prefix=prefix, keep_last=keep_last, cache_dir=cache_dir)

    def __repr__(self) -> str:
        return f"RedisRegistry(prefix={self.prefix!r}, keep_last={self.keep_last})"

    # --- keys --------------------------------------------------------------------------------

    def _key(self, project: str, *parts: str | int) -> str:
        return ":".join([self.prefix, "project", check_project(project), *map(str, parts)])

    @property
    def _projects_key(self) -> str:
        return f"{self.prefix}:projects"

    # --- writing -----------------------------------------------------------------------------

    def publish(
        self, project: str, weights: bytes, metadata: dict[str, Any], activate: bool = True
    ) -> VersionInfo:
        weights, _ = check_artifact(weights, metadata)
        counter, index, pointer = (self._key(project, k) for k in ("counter", "versions", "active"))
        with self.client.pipeline(transaction=True) as pipe:
            for _ in range(MAX_ATTEMPTS):
                try:
                    pipe.watch(counter, index, pointer)
                    version = int(pipe.get(counter) or 0) + 1
                    stored = [int(v) for v in pipe.zrange(index, 0, -1)]
                    current = pipe.get(pointer)
                    active = version if activate else (int(current) if current is not None else None)
                    victims = retention_victims([*stored, version], active, self.keep_last)
                    created = time.time()
                    info = {"version": version, "created": created, "metadata": metadata,
                            "uid": uuid.uuid4().hex}
                    pipe.multi()
                    pipe.incr(counter)
                    pipe.hset(self._key(project, "v", version),
                              mapping={"weights": weights, "info": json.dumps(info, sort_keys=True)})
                    pipe.zadd(index, {str(version): version})
                    pipe.sadd(self._projects_key, project)
                    if activate:
                        pipe.set(pointer, version)
                    for victim in victims:
                        pipe.zrem(index, str(victim))
                        pipe.delete(self._key(project, "v", victim))
                    pipe.execute()
                    return VersionInfo(project, version, created, metadata, active == version)
                except redis.WatchError:
                    continue
        raise RegistryError(f"project {project!r}: publish kept conflicting with other writers")

    def activate(self, project: str, version: int) -> VersionInfo:
        check_version(version)
        index, pointer = self._key(project, "versions"), self._key(project, "active")
        with self.client.pipeline(transaction=True) as pipe:
            for _ in range(MAX_ATTEMPTS):
                try:
                    pipe.watch(index)
                    if pipe.zscore(index, str(version)) is None:
                        pipe.unwatch()
                        raise self._not_found(project, version)
                    pipe.multi()
                    pipe.set(pointer, version)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
            else:
                raise RegistryError(f"project {project!r}: activate kept conflicting with other writers")
        info, _ = self._read(project, version, with_weights=False)
        return info

    def delete_version(self, project: str, version: int) -> None:
        check_version(version)
        index, pointer = self._key(project, "versions"), self._key(project, "active")
        with self.client.pipeline(transaction=True) as pipe:
            for _ in range(MAX_ATTEMPTS):
                try:
                    pipe.watch(index, pointer)
                    if pipe.zscore(index, str(version)) is None:
                        pipe.unwatch()
                        raise self._not_found(project, version)
                    active = pipe.get(pointer)
                    if active is not None and int(active) == version:
                        pipe.unwatch()
                        raise ValueError(f"project {project!r}: version {version} is active; "
                                         "activate another one first")
                    pipe.multi()
                    pipe.zrem(index, str(version))
                    pipe.delete(self._key(project, "v", version))
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue
        raise RegistryError(f"project {project!r}: delete kept conflicting with other writers")

    def delete_project(self, project: str) -> None:
        pattern = _escape_glob(self._key(project, "")) + "*"
        keys = list(self.client.scan_iter(match=pattern, count=500))
        with self.client.pipeline(transaction=True) as pipe:
            if keys:
                pipe.delete(*keys)
            pipe.srem(self._projects_key, project)
            pipe.execute()
        if self.cache_dir is not None:
            shutil.rmtree(self.cache_dir / project, ignore_errors=True)

    def rename_project(self, project: str, new_name: str) -> None:
        old_index, new_index = self._key(project, "versions"), self._key(new_name, "versions")
        pointers = ("counter", "active")
        with self.client.pipeline(transaction=True) as pipe:
            for _ in range(MAX_ATTEMPTS):
                try:
                    pipe.watch(old_index, new_index, *(self._key(project, name) for name in pointers))
                    stored = [int(v) for v in pipe.zrange(old_index, 0, -1)]
                    taken = [int(v) for v in pipe.zrange(new_index, 0, -1)]
                    if taken or not stored:
                        pipe.unwatch()
                        raise self._rename_refused(project, new_name, taken)
                    present = [name for name in pointers if pipe.exists(self._key(project, name))]
                    pipe.multi()
                    for name in ["versions", *present]:
                        pipe.rename(self._key(project, name), self._key(new_name, name))
                    for version in stored:
                        pipe.rename(self._key(project, "v", version), self._key(new_name, "v", version))
                    pipe.srem(self._projects_key, project)
                    pipe.sadd(self._projects_key, new_name)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
            else:
                raise RegistryError(f"project {project!r}: rename kept conflicting with other writers")
        if self.cache_dir is not None:
            shutil.rmtree(self.cache_dir / project, ignore_errors=True)

    # --- reading -----------------------------------------------------------------------------

    def active_version(self, project: str) -> int | None:
        value = self.client.get(self._key(project, "active"))
        return int(value) if value is not None else None

    def _parse_info(self, project: str, version: int, raw: bytes, active: bool) -> tuple[VersionInfo, str]:
        try:
            info = json.loads(raw)
            created, metadata, uid = float(info["created"]), dict(info["metadata"]), str(info.get("uid", ""))
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"project {project!r}: corrupt info of version {version}: {exc}") from exc
        return VersionInfo(project, version, created, metadata, active), uid

    def _read(self, project: str, version: int, with_weights: bool) -> tuple[VersionInfo, bytes]:
        key = self._key(project, "v", version)
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hget(key, "info")
            pipe.get(self._key(project, "active"))
            raw, active = pipe.execute()
        if raw is None:
            raise self._not_found(project, version)
        info, uid = self._parse_info(project, version, raw, active is not None and int(active) == version)
        if not with_weights:
            return info, b""
        cached = self._cache_path(project, version, uid)
        if cached is not None and cached.is_file():
            return info, cached.read_bytes()
        weights = self.client.hget(key, "weights")
        if weights is None:  # deleted between the two reads
            raise self._not_found(project, version)
        if cached is not None:
            self._store_in_cache(cached, weights)
        return info, weights

    def _cache_path(self, project: str, version: int, uid: str) -> Path | None:
        if self.cache_dir is None or not uid:
            return None
        return self.cache_dir / project / f"v{version}-{uid}.safetensors"

    @staticmethod
    def _store_in_cache(path: Path, weights: bytes) -> None:
        # A cache is an optimisation: failing to write it must not fail the load.
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
            tmp.write_bytes(weights)
            os.replace(tmp, path)

    def versions(self, project: str) -> list[VersionInfo]:
        stored = [int(v) for v in self.client.zrange(self._key(project, "versions"), 0, -1)]
        if not stored:
            return []
        with self.client.pipeline(transaction=False) as pipe:
            pipe.get(self._key(project, "active"))
            for version in stored:
                pipe.hget(self._key(project, "v", version), "info")
            active_raw, *infos = pipe.execute()
        active = int(active_raw) if active_raw is not None else None
        return [
            self._parse_info(project, version, raw, version == active)[0]
            for version, raw in zip(stored, infos, strict=True)
            if raw is not None  # removed by retention while we listed
        ]

    def load(self, project: str, version: int | None = None) -> tuple[VersionInfo, bytes]:
        if version is not None:
            return self._read(project, check_version(version), with_weights=True)
        for _ in range(3):
            active = self.active_version(project)
            if active is None:
                raise self._not_found(project, None)
            try:
                return self._read(project, active, with_weights=True)
            except LookupError:
                continue  # the pointer moved and the old version was removed meanwhile
        raise self._not_found(project, None)

    def projects(self) -> list[str]:
        members = [m.decode() for m in self.client.smembers(self._projects_key)]
        return sorted(members, key=project_sort_key)
