"""Versioned adapters per project: a small storage interface with a local-directory and a Redis
implementation.

- ``base``: ``AdapterRegistry`` (the interface), ``VersionInfo``, ``RegistryError``, ``VersionNotFound``.
- ``local``: ``LocalRegistry``, versions in a directory tree (atomic renames, fcntl locks).
- ``redis_store``: ``RedisRegistry``, versions in Redis (one MULTI/EXEC per publish), for remote workers.
- ``factory``: ``open_registry``, a registry from a Redis URL or a directory path.

Imports no other package of ``training``.
"""

from training.registry.base import AdapterRegistry, RegistryError, VersionInfo, VersionNotFound
from training.registry.factory import open_registry
from training.registry.local import LocalRegistry
from training.registry.redis_store import RedisRegistry

__all__ = [
    "AdapterRegistry",
    "LocalRegistry",
    "RedisRegistry",
    "RegistryError",
    "VersionInfo",
    "VersionNotFound",
    "open_registry",
]
