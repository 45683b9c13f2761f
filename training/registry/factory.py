"""`open_registry`: pick the registry store from one configuration string."""

from __future__ import annotations

from pathlib import Path

from training.registry.base import AdapterRegistry
from training.registry.local import LocalRegistry
from training.registry.redis_store import RedisRegistry

__all__ = ["open_registry", "REDIS_SCHEMES"]

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_registry(
    spec: str | Path,
    keep_last: int = 10,
    prefix: str = "samloop",
    cache_dir: str | Path | None = None,
) -> AdapterRegistry:
    """Open a registry from a URL or a path.

    Args:
        spec: `redis://...`, `rediss://...` or `unix://...` → `RedisRegistry` (via
            `redis.Redis.from_url`); anything else is a directory → `LocalRegistry`.
            For an existing `redis.Redis` client use `RedisRegistry(client, ...)`.
        keep_last: versions kept per project.
        prefix, cache_dir: Redis only (key namespace; local weights cache).
    """
    if isinstance(spec, str) and spec.lower().startswith(REDIS_SCHEMES):
        return RedisRegistry.from_url(spec, prefix=prefix, keep_last=keep_last, cache_dir=cache_dir)
    if not isinstance(spec, str | Path) or not str(spec).strip():
        raise ValueError(f"registry spec must be a Redis URL or a directory path, got {spec!r}")
    if "://" in str(spec):
        raise ValueError(f"unsupported registry URL {spec!r}: use one of {REDIS_SCHEMES} or a directory path")
    return LocalRegistry(Path(spec), keep_last=keep_last)
