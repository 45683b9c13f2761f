"""A real uvicorn server: /health answers during a long batch; concurrent projects keep their adapters."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from backend.app import create_app
from backend.webhook import RecordingScheduler
from tests.backend.conftest import (
    brush_task,
    encode,
    keypoint,
    make_settings,
    noise_image,
    predict_body,
    publish_adapter,
    serve_app,
)
from training.registry import LocalRegistry


@pytest.fixture
def served(tmp_path, redis_prefix):
    settings = make_settings(tmp_path, redis_prefix)
    registry = LocalRegistry(tmp_path / "adapters")
    app = create_app(settings, registry=registry, scheduler=RecordingScheduler())
    url, server, thread = serve_app(app)
    yield url, app, registry
    server.should_exit = True
    thread.join(10)


def test_health_answers_within_a_second_during_a_long_batch(served, shared_server):
    url, app, registry = served
    publish_adapter(registry, app.state.services.models.weights, "21", ["cat", "dog"], seed=1)
    tasks = [brush_task(i, shared_server.add(f"/long-{i}.png", encode(noise_image(300, 400, i)))) for i in range(24)]
    with ThreadPoolExecutor(1) as pool:
        batch = pool.submit(httpx.post, f"{url}/predict", json=predict_body("21", tasks), timeout=120)
        slowest = 0.0
        polls = 0
        while not batch.done():
            start = time.monotonic()
            assert httpx.get(f"{url}/health", timeout=5).json()["status"] == "UP"
            slowest = max(slowest, time.monotonic() - start)
            polls += 1
            time.sleep(0.05)
        response = batch.result()
    assert response.status_code == 200 and len(response.json()["results"]) == 24
    assert polls >= 3 and slowest < 1.0


def test_concurrent_projects_each_get_their_own_adapter(served, shared_server):
    url, app, registry = served
    weights = app.state.services.models.weights
    for project, seed in (("31", 1), ("32", 2)):
        publish_adapter(registry, weights, project, ["cat", "dog"], seed=seed)
    image = shared_server.add("/shared-conc.png", encode(noise_image(120, 160, 3)))

    def click(project: str) -> tuple[str, list]:
        body = predict_body(project, [brush_task(1, image)], context={"result": [keypoint(40, 50, "dog")]})
        result = httpx.post(f"{url}/predict", json=body, timeout=60).json()["results"][0]
        return result["model_version"], [r["value"]["rle"] for r in result["result"]]

    alone = {project: click(project) for project in ("31", "32")}
    assert alone["31"][1] != alone["32"][1]
    projects = ["31", "32"] * 6
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(click, projects))
    # Interleaved requests never see the other project's adapter: same versions, same masks as alone.
    assert together == [alone[p] for p in projects]
    assert alone["31"][0] == "samloop-vit_t-256-RANDOM-WEIGHTS-p31-v1"
