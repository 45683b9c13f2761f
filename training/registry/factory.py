"""`open_registry`: the one place a registry store is chosen, from one configuration string.

Every opening goes through it: the backend (SAMLOOP_ADAPTER_STORE, ``backend.services``), the training
job (its ``registry`` setting, ``training.jobs.training_job``) and the offline CLI (``--registry``).
"""

from __future__ import annotations

from pathlib import Path

import redis

from training.registry.base import AdapterRegistry
from training.registry.local import LocalRegistry
from training.registry.redis_store import RedisRegistry

__all__ = ["CONNECTED_REDIS", "REDIS_SCHEMES", "open_registry"]

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
# The spec naming the Redis the caller is already connected to (the backend's, an rq job's): a worker
# without a shared disk reaches the registry through the connection it was handed, not through a URL.
CONNECTED_REDIS = "redis"


def open_registry(
    spec: str | Path,
    keep_last: int = 10,
    prefix: str = "samloop",
    cache_dir: str | Path | None = None,
    client: redis.Redis | None = None,
) -> AdapterRegistry:
    """Open a registry from a URL, a path, or ``"redis"`` with a client.

    Args:
        spec: ``"redis"`` → `RedisRegistry` on ``client``; `redis://...`, `rediss://...` or
            `unix://...` → `RedisRegistry` (via `redis.Redis.from_url`); anything else is a
            directory → `LocalRegistry`.
        keep_last: versions kept per project.
        prefix, cache_dir: Redis only (key namespace; local weights cache).
        client: the connection ``"redis"`` means (bytes in and out: ``decode_responses=False``).

    Raises:
        ValueError: an empty spec, an unsupported URL, or ``"redis"`` without a client.
    """
    if isinstance(spec, str) and spec.strip().lower() == CONNECTED_REDIS:
        if client is None:
            raise ValueError("registry 'redis' means the Redis this process is connected to (an rq job's); "
                             "outside rq give a redis:// URL")
        return RedisRegistry(client, prefix=prefix, keep_last=keep_last, cache_dir=cache_dir)
    if isinstance(spec, str) and spec.lower().startswith(REDIS_SCHEMES):
        return RedisRegistry.from_url(spec, prefix=prefix, keep_last=keep_last, cache_dir=cache_dir)
    if not isinstance(spec, str | Path) or not str(spec).strip():
        raise ValueError(f"registry spec must be a Redis URL, 'redis' or a directory path, got {spec!r}")
    if "://" in str(spec):
        raise ValueError(f"unsupported registry URL {spec!r}: use one of {REDIS_SCHEMES} or a directory path")
    return LocalRegistry(Path(spec), keep_last=keep_last)
