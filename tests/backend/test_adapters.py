"""Adapters reach predictions without a restart: hot swap, pinning, rollback, outages."""

from __future__ import annotations

import redis
from fastapi.testclient import TestClient

from backend.app import create_app
from backend.webhook import RecordingScheduler
from tests.backend.conftest import (
    BRUSH_CONFIG,
    brush_task,
    encode,
    ls_id,
    make_settings,
    noise_image,
    predict_body,
    publish_adapter,
)
from training.model.config import AdapterConfig
from training.registry import RedisRegistry

PREFIX = "samloop-vit_t-256-RANDOM-WEIGHTS"


def predict_version(backend, project: str, url: str) -> tuple[str, list]:
    (result,) = backend.client.post("/predict", json=predict_body(project, [brush_task(1, url)])).json()["results"]
    return result["model_version"], result["result"]


def test_new_active_version_is_served_without_restart_or_base_rebuild(backend, project, shared_server):
    url = shared_server.add(f"/{project}-swap.png", encode(noise_image(90, 120, 1)))
    models = backend.services.models
    builds = models.base_builds
    assert predict_version(backend, project, url)[0] == f"{PREFIX}-untrained"
    backend.publish(project, ["cat", "dog"], seed=1)
    version1, regions1 = predict_version(backend, project, url)
    backend.publish(project, ["cat", "dog"], seed=2)
    version2, regions2 = predict_version(backend, project, url)
    assert (version1, version2) == (f"{PREFIX}-p{project}-v1", f"{PREFIX}-p{project}-v2")
    assert _strip_ids(regions1) != _strip_ids(regions2)
    assert backend.client.post("/setup", json={"project": project, "schema": BRUSH_CONFIG}).json() == {
        "model_version": version2}
    assert models.base_builds == builds


def test_projects_alternate_on_one_model(backend, project, shared_server):
    other = str(ls_id(project) + 200000)
    url = shared_server.add(f"/{project}-alt.png", encode(noise_image(90, 120, 2)))
    backend.publish(project, ["cat", "dog"], seed=3)
    backend.publish(other, ["cat", "dog"], seed=4)
    first = predict_version(backend, project, url)
    second = predict_version(backend, other, url)
    again = predict_version(backend, project, url)
    assert first[0].endswith(f"-p{project}-v1") and second[0].endswith(f"-p{other}-v1")
    assert _strip_ids(first[1]) == _strip_ids(again[1])  # switching back gives the same masks
    assert _strip_ids(first[1]) != _strip_ids(second[1])


def _strip_ids(regions: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "id"} for r in regions]


def test_pinned_version_and_rollback(backend, project, shared_server):
    url = shared_server.add(f"/{project}-pin.png", encode(noise_image(90, 120, 3)))
    backend.publish(project, ["cat", "dog"], seed=5)
    backend.publish(project, ["cat", "dog"], seed=6)
    client = backend.client
    response = client.patch(f"/projects/{project}/settings", json={"pinned_version": 1})
    assert response.status_code == 200 and response.json()["model_version"] == f"{PREFIX}-p{project}-v1"
    assert predict_version(backend, project, url)[0] == f"{PREFIX}-p{project}-v1"
    client.patch(f"/projects/{project}/settings", json={"pinned_version": None})
    assert predict_version(backend, project, url)[0] == f"{PREFIX}-p{project}-v2"
    # Rollback through the admin API: version 1 becomes the active one for everybody.
    assert client.post(f"/projects/{project}/activate", json={"version": 1}).json()["active"].endswith("-v1")
    assert predict_version(backend, project, url)[0] == f"{PREFIX}-p{project}-v1"
    assert client.post(f"/projects/{project}/activate", json={"version": 9}).status_code == 404
    assert client.patch(f"/projects/{project}/settings", json={"pinned_version": 9}).status_code == 422


def test_pinned_version_that_disappeared_falls_back_to_active(backend, project, shared_server):
    url = shared_server.add(f"/{project}-gone.png", encode(noise_image(50, 50, 4)))
    backend.publish(project, ["cat"], seed=1)
    backend.client.patch(f"/projects/{project}/settings", json={"pinned_version": 1})
    backend.registry.delete_project(project)
    backend.publish(project, ["cat"], seed=2)  # numbering restarts after a delete: v1 again
    backend.client.patch(f"/projects/{project}/settings", json={"pinned_version": None})
    backend.services.store.update(project, {"pinned_version": 5})  # as if set before the versions vanished
    assert predict_version(backend, project, url)[0] == f"{PREFIX}-p{project}-v1"


def test_adapter_with_another_config_gets_its_own_model(backend, project, shared_server):
    url = shared_server.add(f"/{project}-cfg.png", encode(noise_image(64, 64, 5)))
    models = backend.services.models
    builds = models.base_builds
    config = AdapterConfig(lora_rank=4, decoder="frozen")
    publish_adapter(backend.registry, models.weights, project, ["cat", "dog"], seed=1, config=config)
    version, regions = predict_version(backend, project, url)
    assert version == f"{PREFIX}-p{project}-v1" and regions
    assert models.base_builds == builds + 1
    predict_version(backend, project, url)
    assert models.base_builds == builds + 1


def test_adapter_for_another_base_is_refused_and_untrained_is_served(backend, project, shared_server, tmp_path):
    from training.model.weights import BaseWeights

    url = shared_server.add(f"/{project}-alien.png", encode(noise_image(64, 64, 6)))
    alien = BaseWeights("vit_t", None, "random")
    from training.model.loading import new_adapter_model

    model = new_adapter_model(alien, 128, ["cat"])  # trained at another image size
    backend.registry.publish(project, model.to_bytes(), {})
    assert predict_version(backend, project, url)[0] == f"{PREFIX}-untrained"


def test_redis_store_and_redis_outage_keep_serving_the_last_adapter(tmp_path, redis_prefix, shared_server):
    settings = make_settings(tmp_path, redis_prefix, SAMLOOP_ADAPTER_STORE="redis")
    project = "77"
    url = shared_server.add("/outage.png", encode(noise_image(64, 64, 7)))
    with TestClient(create_app(settings, scheduler=RecordingScheduler())) as client:
        services = client.app.state.services
        assert isinstance(services.registry, RedisRegistry)
        # A worker on another machine publishes through Redis alone.
        publisher = RedisRegistry(redis.Redis.from_url(settings.REDIS_URL), prefix=redis_prefix)
        publish_adapter(publisher, services.models.weights, project, ["cat", "dog"], seed=1)
        body = predict_body(project, [brush_task(1, url)])
        first = client.post("/predict", json=body).json()["results"][0]
        assert first["model_version"] == f"{PREFIX}-p{project}-v1" and first["result"]
        dead = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
        services.registry.client = dead
        services.store.client = dead
        during = client.post("/predict", json=body)
        assert during.status_code == 200
        assert during.json()["results"][0]["model_version"] == f"{PREFIX}-p{project}-v1"
        assert during.json()["results"][0]["result"]
        assert client.get("/versions").status_code == 503


def test_setup_without_switches_works_through_a_redis_outage(backend, project):
    store = backend.services.store
    alive = store.client
    store.client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        plain = backend.client.post("/setup", json={"project": project, "schema": BRUSH_CONFIG})
        with_switch = backend.client.post("/setup", json={"project": project, "schema": BRUSH_CONFIG,
                                                          "extra_params": {"predictions": False}})
    finally:
        store.client = alive
    assert plain.status_code == 200 and plain.json()["model_version"].endswith("-untrained")
    assert with_switch.status_code == 503 and "Redis unreachable" in with_switch.json()["detail"]
