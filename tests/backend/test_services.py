"""The backend's registry comes from the one factory (``training.registry.factory.open_registry``), as
SAMLOOP_ADAPTER_STORE chooses; the training job's comes from the same factory, as its ``registry`` says."""

from __future__ import annotations

import pytest
import redis
from rq.job import Job

from backend.services import open_adapter_registry
from tests.backend.conftest import REDIS_URL, make_settings
from training.jobs.redis_conn import RedisHandle
from training.jobs.training_job import open_job_registry
from training.pipeline.settings import JobSettings
from training.registry import LocalRegistry, RedisRegistry


@pytest.fixture
def handle() -> RedisHandle:
    return RedisHandle(redis.Redis.from_url(REDIS_URL), REDIS_URL, embedded=False)


@pytest.mark.parametrize(("store", "redis_url", "kind"), [
    ("local", REDIS_URL, LocalRegistry),
    ("redis", "", RedisRegistry),
    ("auto", "", LocalRegistry),  # the embedded Redis: nobody else reaches it, the directory is the store
    ("auto", REDIS_URL, RedisRegistry),  # a Redis server: workers elsewhere share it
])
def test_the_adapter_store_setting_chooses(tmp_path, handle, store, redis_url, kind):
    settings = make_settings(tmp_path, "p", SAMLOOP_ADAPTER_STORE=store, REDIS_URL=redis_url, SAMLOOP_KEEP_VERSIONS=4)
    registry = open_adapter_registry(settings, handle)
    assert type(registry) is kind and registry.keep_last == 4
    if kind is LocalRegistry:
        assert registry.root == tmp_path / "adapters"
    else:  # on the backend's own connection, with its prefix
        assert registry.client is handle.client and registry.prefix == "p"
        assert registry.cache_dir == tmp_path / "adapter-cache"


def test_the_job_registry_setting_chooses(tmp_path, handle):
    data_dir = str(tmp_path)
    local = open_job_registry(JobSettings(data_dir=data_dir, keep_versions=3), None)
    assert isinstance(local, LocalRegistry) and local.root == tmp_path / "adapters" and local.keep_last == 3
    job = Job.create("builtins.print", connection=handle.client)
    remote = open_job_registry(JobSettings(data_dir=data_dir, registry="redis", redis_prefix="q"), job)
    assert isinstance(remote, RedisRegistry) and remote.client is handle.client and remote.prefix == "q"
    assert remote.cache_dir == tmp_path / "adapter-cache"
    with pytest.raises(ValueError, match="outside rq give a redis:// URL"):
        open_job_registry(JobSettings(data_dir=data_dir, registry="redis"), None)
    elsewhere = open_job_registry(JobSettings(data_dir=data_dir, registry=str(tmp_path / "other")), job)
    assert isinstance(elsewhere, LocalRegistry) and elsewhere.root == tmp_path / "other"
