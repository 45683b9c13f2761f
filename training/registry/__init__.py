"""Versioned LoRA adapters per project: a small storage interface with a local-directory and a
Redis implementation (see `base.AdapterRegistry`)."""

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
