"""``AdapterRegistry.delete_version`` on both stores: one version goes, the active one stays, numbers are not reused."""

from __future__ import annotations

import pytest

from tests.training.registry import test_registry as registry_tests
from tests.training.registry.test_registry import Store, weights_for
from training.registry import VersionNotFound

# Both stores, from the registry's own tests (the fixtures are module-level there, not in a conftest).
store = registry_tests.store
redis_url = registry_tests.redis_url


def test_delete_one_version(store: Store) -> None:
    registry = store.make()
    for n in range(3):
        registry.publish("4", weights_for(n), {"n": n})
    registry.delete_version("4", 2)
    assert [v.version for v in registry.versions("4")] == [1, 3]
    with pytest.raises(VersionNotFound, match="version 2 not found"):
        registry.load("4", 2)
    assert registry.load("4", 1)[1] == weights_for(0)
    # A later publish takes a new number: version 2 never comes back with other weights.
    assert registry.publish("4", weights_for(9), {"n": 9}).version == 4


def test_the_active_version_and_missing_ones_are_refused(store: Store) -> None:
    registry = store.make()
    registry.publish("5", weights_for(1), {})
    registry.publish("5", weights_for(2), {})
    with pytest.raises(ValueError, match="version 2 is active"):
        registry.delete_version("5", 2)
    with pytest.raises(VersionNotFound, match=r"available versions: \[1, 2\]"):
        registry.delete_version("5", 7)
    registry.activate("5", 1)
    registry.delete_version("5", 2)
    assert [v.version for v in registry.versions("5")] == [1] and registry.active_version("5") == 1
