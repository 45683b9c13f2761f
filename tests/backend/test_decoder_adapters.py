"""Frozen-encoder ("decoder" kind) adapters in the backend: embeddings outlive versions and restarts,
and clicks are SAM's unless the version measured its own decoder better."""

from __future__ import annotations

import torch

from tests.backend.conftest import (
    IMAGE_SIZE,
    brush_task,
    encode,
    keypoint,
    noise_image,
    predict_body,
    start_backend,
)
from training.model.loading import new_adapter_model


def click(backend, project: str, url: str, x: float = 40, y: float = 50) -> dict:
    body = predict_body(project, [brush_task(1, url)], context={"result": [keypoint(x, y)]})
    response = backend.client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    return result


def publish_decoder_adapter(backend, project: str, seed: int, clicks_decoder: str | None) -> int:
    """A frozen-encoder adapter whose decoder differs from SAM's (so the two answer clicks differently)."""
    model = new_adapter_model(backend.services.models.weights, IMAGE_SIZE, ["cat", "dog"])
    assert model.config.kind == "decoder"
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.trainable_parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.5)
    extra = {} if clicks_decoder is None else {"clicks_decoder": clicks_decoder}
    return backend.registry.publish(project, model.to_bytes(extra), {"seed": seed}).version


def masks(result: dict) -> list:
    return [r["value"]["rle"] for r in result["result"]]


def test_a_click_after_a_new_version_lands_runs_no_encoder(backend, project, shared_server):
    url = shared_server.add(f"/{project}-keep.png", encode(noise_image(100, 120, 21)))
    models = backend.services.models
    before = models.encoded_on_request
    assert click(backend, project, url)["model_version"].endswith("-untrained")
    assert models.encoded_on_request - before == 1
    for seed in (1, 2):
        version = publish_decoder_adapter(backend, project, seed, "adapter")
        assert click(backend, project, url)["model_version"].endswith(f"-p{project}-v{version}")
    assert models.encoded_on_request - before == 1  # one encoding served three versions


def test_clicks_are_sams_unless_the_version_measured_its_decoder_better(backend, project, shared_server):
    url = shared_server.add(f"/{project}-gate.png", encode(noise_image(100, 120, 22)))
    sam = masks(click(backend, project, url))
    publish_decoder_adapter(backend, project, 3, "base")
    assert masks(click(backend, project, url)) == sam
    publish_decoder_adapter(backend, project, 3, None)  # not measured (e.g. trained offline): SAM's
    assert masks(click(backend, project, url)) == sam
    publish_decoder_adapter(backend, project, 3, "adapter")
    assert masks(click(backend, project, url)) != sam


def test_a_restart_keeps_stored_embeddings(tmp_path, redis_prefix, file_server):
    url = file_server.add("/restart.png", encode(noise_image(90, 110, 23)))
    first, stop = start_backend(tmp_path, redis_prefix)
    try:
        click(first, "5", url)
        assert first.services.models.encoded_images == 1
    finally:
        stop()
    again, stop = start_backend(tmp_path, redis_prefix)
    try:
        click(again, "5", url)
        assert again.services.models.encoded_images == 0
        assert again.services.models.store.hits == 1
    finally:
        stop()


def test_the_store_can_be_turned_off(tmp_path, redis_prefix, file_server):
    url = file_server.add("/off.png", encode(noise_image(90, 110, 24)))
    for _ in range(2):
        app, stop = start_backend(tmp_path, redis_prefix, EMBEDDING_STORE_MB=0)
        try:
            assert app.services.models.store is None
            click(app, "6", url)
            assert app.services.models.encoded_images == 1  # nothing kept across the restart
        finally:
            stop()
