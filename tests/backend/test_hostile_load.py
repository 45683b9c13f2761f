"""Issue 16, load: several annotators click on several projects while a training job runs (a real worker
process on the same cores) and batch predictions wait on a trickling image host. No click fails,
every webhook is answered within a second, memory stays bounded. Prints the figures (slow: ~1 min).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil
import pytest
from rq.job import Job

from tests.backend.conftest import brush_task, encode, keypoint, noise_image, predict_body, publish_adapter
from tests.backend.test_hostile_images import streamer  # noqa: F401 - the trickling host fixture
from tests.backend.test_hostile_threads import serve
from tests.training.jobs.test_scheduler import REPO, wait_for
from tests.training.jobs.test_training_job import PROJECT, QUEUE, conn, ls, make_scheduler, settings_for  # noqa: F401

SECONDS = 30.0
ANNOTATORS = 4
PROJECTS = ("61", "62", "63")
MB = 1024 * 1024


def training_worker(connection) -> subprocess.Popen:
    url = f"unix://{connection.connection_pool.connection_kwargs['path']}"
    return subprocess.Popen([sys.executable, "-m", "training.jobs.worker", "--url", url, "--queues", QUEUE,
                             "--worker-class", "simple", "--log-level", "WARNING", "--nice", "10"],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                            start_new_session=True)


def annotator(url: str, images: list[str], index: int, stop: threading.Event) -> tuple[list[float], list[str]]:
    latencies, failures = [], []
    rng = np.random.default_rng(index)
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            project = PROJECTS[int(rng.integers(len(PROJECTS)))]
            image = images[int(rng.integers(len(images)))]
            points = [keypoint(float(rng.uniform(5, 95)), float(rng.uniform(5, 95)), width=160, height=120)]
            start = time.monotonic()
            response = client.post(f"{url}/predict", json=predict_body(project, [brush_task(1, image)],
                                                                      context={"result": points}))
            latencies.append(time.monotonic() - start)
            if response.status_code != 200 or "error" in response.json()["results"][0]:
                failures.append(response.text[:200])
    return latencies, failures


def webhooks(url: str, stop: threading.Event) -> list[float]:
    latencies = []
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            start = time.monotonic()
            response = client.post(f"{url}/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 61}})
            latencies.append(time.monotonic() - start)
            assert response.status_code == 201
            time.sleep(0.5)
    return latencies


def slow_batches(url: str, trickle: str, stop: threading.Event) -> int:
    answered = 0
    with httpx.Client(timeout=120) as client:
        while not stop.is_set():
            body = predict_body("62", [brush_task(i, f"{trickle}/trickle?{i}") for i in range(2)])
            results = client.post(f"{url}/predict", json=body).json()["results"]
            assert all("IMAGE_DOWNLOAD_DEADLINE" in r["error"] for r in results)
            answered += 1
    return answered


@pytest.mark.slow
def test_clicks_webhooks_and_memory_under_load(tmp_path, redis_prefix, file_server, streamer, conn, ls):  # noqa: F811
    url, server, thread = serve(tmp_path / "backend", redis_prefix, IMAGE_DOWNLOAD_TIMEOUT=2.0,
                                IMAGE_DOWNLOAD_DEADLINE=4.0)
    app = server.config.app
    for seed, project in enumerate(PROJECTS):
        publish_adapter(app.state.services.registry, app.state.services.models.weights, project, ["cat", "dog"],
                        seed=seed)
    images = [file_server.add(f"/load-{i}.png", encode(noise_image(120, 160, i))) for i in range(6)]
    sched = make_scheduler(conn, settings_for(ls, tmp_path, max_steps=5000, min_steps=5000, train_max_seconds=120))
    job = sched.schedule(PROJECT, "ANNOTATION_CREATED", False)
    worker = training_worker(conn)
    process, stop = psutil.Process(), threading.Event()
    try:
        queued = Job.fetch(job["job_id"], connection=conn)
        wait_for(lambda: queued.get_meta(refresh=True).get("stage") == "training", timeout=180, interval=0.5)
        rss_start, rss_peak = process.memory_info().rss, 0
        with ThreadPoolExecutor(ANNOTATORS + 2) as pool:
            clickers = [pool.submit(annotator, url, images, i, stop) for i in range(ANNOTATORS)]
            hooks = pool.submit(webhooks, url, stop)
            batches = pool.submit(slow_batches, url, streamer, stop)
            deadline = time.monotonic() + SECONDS
            while time.monotonic() < deadline:
                rss_peak = max(rss_peak, process.memory_info().rss)
                time.sleep(0.5)
            stop.set()
            clicks = [c.result() for c in clickers]
            hook_latencies, batch_count = hooks.result(), batches.result()
        still_training = worker.poll() is None
    finally:
        stop.set()
        os.killpg(worker.pid, signal.SIGKILL)
        server.should_exit = True
        thread.join(30)
    latencies = sorted(x for lat, _ in clicks for x in lat)
    failures = [f for _, fail in clicks for f in fail]
    p50, p95 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.95)]
    grown = (rss_peak - rss_start) / MB
    print(f"load: {len(latencies)} clicks by {ANNOTATORS} annotators on {len(PROJECTS)} projects in {SECONDS:.0f} s "
          f"with a training job running: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, max "
          f"{latencies[-1] * 1000:.0f} ms, {len(failures)} failed; {len(hook_latencies)} webhooks, slowest "
          f"{max(hook_latencies) * 1000:.0f} ms; {batch_count} batches on a trickling host cut at the deadline; "
          f"RSS {rss_start / MB:.0f} MB -> peak {rss_peak / MB:.0f} MB (+{grown:.0f} MB)")
    assert still_training, "the training job should have run through the whole load window"
    assert failures == [] and len(latencies) >= ANNOTATORS * 5
    assert max(hook_latencies) < 1.0
    assert grown < 600
