"""Issue 16, items 4 and 6 on a real uvicorn server: slow image URLs do not starve webhooks, settings and
health; a stalled request body is answered 408 instead of holding its connection forever."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn

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
from tests.backend.test_hostile_images import streamer  # noqa: F401 - the trickling host fixture
from training.registry import LocalRegistry

HANG_S = 6.0  # every slow download hangs this long (IMAGE_DOWNLOAD_TIMEOUT)
SLOW_PREDICTS = 44  # more than anyio's 40 default threads: before the fix they took them all


def serve(tmp_path, prefix: str, **overrides) -> tuple[str, uvicorn.Server, threading.Thread]:
    settings = make_settings(tmp_path, prefix, **overrides)
    app = create_app(settings, registry=LocalRegistry(tmp_path / "adapters"), scheduler=RecordingScheduler())
    return serve_app(app, timeout_graceful_shutdown=2)


@pytest.fixture
def silent_host() -> Iterator[str]:
    """A host that accepts connections (kernel backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def timed(call) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = call()
    return response, time.monotonic() - start


def test_webhooks_settings_and_health_never_queue_behind_slow_downloads(tmp_path, redis_prefix, silent_host):
    url, server, thread = serve(tmp_path, redis_prefix, IMAGE_DOWNLOAD_TIMEOUT=HANG_S, PREDICT_THREADS=22)
    try:
        def click(i: int) -> httpx.Response:
            body = predict_body("41", [brush_task(i, f"{silent_host}/img-{i}.png")],
                                context={"result": [keypoint(40, 50)]})
            return httpx.post(f"{url}/predict", json=body, timeout=120)

        with ThreadPoolExecutor(SLOW_PREDICTS) as pool:
            clicks = [pool.submit(click, i) for i in range(SLOW_PREDICTS)]
            time.sleep(1.5)  # all of them in flight, the first 22 inside their downloads
            answers = [
                timed(lambda: httpx.post(f"{url}/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 41}},
                                         timeout=30)),
                timed(lambda: httpx.get(f"{url}/projects/41/settings", timeout=30)),
                timed(lambda: httpx.get(f"{url}/health", timeout=30)),
                timed(lambda: httpx.get(f"{url}/versions", timeout=30)),
            ]
            still_hanging = sum(not c.done() for c in clicks)
            # No pile-up: PREDICT_THREADS clicks hold a thread, the others wait for one without holding any.
            limiter = server.config.app.state.predict_limiter.statistics()
            results = [c.result() for c in clicks]
        for response, took in answers:
            assert response.status_code == 200, response.text
            # Label Studio waits 1 s; a queued webhook waited for a download (4 s before the fix). 1.5 s leaves
            # room for a busy shared machine (typically 50-300 ms here).
            assert took < 1.5, f"{response.request.url} took {took:.2f} s while downloads hung for {HANG_S} s"
        assert still_hanging >= SLOW_PREDICTS - 2
        assert limiter.borrowed_tokens == 22 and limiter.tasks_waiting == SLOW_PREDICTS - 22
        for response in results:  # each slow image is a per-task error once its download times out
            (result,) = response.json()["results"]
            assert response.status_code == 200 and "timed out" in result["error"]
    finally:
        server.should_exit = True
        thread.join(30)


def test_stalled_request_body_is_answered_408(tmp_path, redis_prefix):
    url, server, thread = serve(tmp_path, redis_prefix, REQUEST_BODY_TIMEOUT=1.0)
    port = int(url.rsplit(":", 1)[1])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            start = time.monotonic()
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"tasks\": [")
            answer = sock.recv(4096)  # before the fix: nothing, until this socket's 10 s timeout
            took = time.monotonic() - start
            while b"REQUEST_BODY_TIMEOUT" not in answer and (more := sock.recv(4096)):
                answer += more  # the body may come in a packet of its own
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"REQUEST_BODY_TIMEOUT" in answer and took < 8
        assert httpx.get(f"{url}/health", timeout=5).json()["status"] == "UP"
    finally:
        server.should_exit = True
        thread.join(30)


def test_slow_batches_of_one_project_do_not_delay_another_projects_batch(tmp_path, redis_prefix, streamer,  # noqa: F811
                                                                          file_server):
    url, server, thread = serve(tmp_path, redis_prefix, IMAGE_DOWNLOAD_TIMEOUT=2.0, IMAGE_DOWNLOAD_DEADLINE=8.0)
    services = server.config.app.state.services
    for project in ("71", "72"):
        publish_adapter(services.registry, services.models.weights, project, ["cat"], seed=1)
    good = file_server.add("/batch-good.png", encode(noise_image(60, 80)))

    def slow_batch(k: int) -> httpx.Response:
        tasks = [brush_task(i, f"{streamer}/trickle-{k}-{i}") for i in range(3)]
        return httpx.post(f"{url}/predict", json=predict_body("71", tasks), timeout=120)

    try:
        with ThreadPoolExecutor(5) as pool:
            slow = [pool.submit(slow_batch, k) for k in range(5)]
            time.sleep(1.0)  # all five downloading from the trickling host (8 s deadline per image)
            other, took = timed(lambda: httpx.post(f"{url}/predict", timeout=60, json=predict_body(
                "72", [brush_task(1, good), brush_task(2, good)])))
            slow_results = [s.result().json()["results"] for s in slow]
        assert other.status_code == 200 and all("error" not in r for r in other.json()["results"])
        assert took < 5.0, f"project 72's batch took {took:.1f} s behind project 71's slow downloads (15 s before)"
        assert all("IMAGE_DOWNLOAD_DEADLINE" in r["error"] for results in slow_results for r in results)
    finally:
        server.should_exit = True
        thread.join(30)
