"""``AdapterRegistry.rename_project`` on both stores: everything moves at once, or nothing does."""

from __future__ import annotations

import pytest

from tests.training.registry import test_registry as registry_tests
from tests.training.registry.test_registry import Store, weights_for
from training.registry import RegistryError

store = registry_tests.store
redis_url = registry_tests.redis_url


def test_versions_numbers_and_pointer_move(store: Store) -> None:
    registry = store.make()
    for n in range(3):
        registry.publish("3", weights_for(n), {"n": n})
    registry.activate("3", 2)
    registry.delete_version("3", 3)
    registry.rename_project("3", "3.1712345678")
    assert registry.versions("3") == [] and registry.active_version("3") is None
    assert [v.version for v in registry.versions("3.1712345678")] == [1, 2]
    assert registry.active_version("3.1712345678") == 2
    assert registry.load("3.1712345678")[1] == weights_for(1)
    assert registry.projects() == ["3.1712345678"]
    # Numbers are never reused, also after the move: version 3 was deleted, the next one is 4.
    assert registry.publish("3.1712345678", weights_for(7), {}).version == 4


def test_a_taken_or_empty_name_moves_nothing(store: Store) -> None:
    registry = store.make()
    registry.publish("3", weights_for(1), {})
    registry.publish("3.1712345678", weights_for(2), {})
    with pytest.raises(RegistryError, match=r"'3.1712345678' already has versions \[1\]"):
        registry.rename_project("3", "3.1712345678")
    with pytest.raises(RegistryError, match="'8': it has no stored versions"):
        registry.rename_project("8", "8.1712345678")
    assert registry.load("3")[1] == weights_for(1)
    assert registry.load("3.1712345678")[1] == weights_for(2)
    assert registry.projects() == ["3", "3.1712345678"]


def test_keys_sort_by_project_number() -> None:
    from training.registry.base import project_sort_key

    names = ["10", "3.1712345678", "x", "3", "2.99"]
    assert sorted(names, key=project_sort_key) == ["2.99", "3", "3.1712345678", "10", "x"]
