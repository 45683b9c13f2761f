"""Issue 24: /health says when Redis or the training worker is unavailable (in its body; 503 only when
asked with ?strict=true), Prometheus has a gauge for each, and the admin console's API carries it."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from fastapi.testclient import TestClient
from rq import Queue, Worker

from backend.app import create_app
from backend.settings import Settings
from backend.training_link import rq_scheduler
from backend.webhook import RecordingScheduler
from testkit.waiting import wait_for
from tests.backend.conftest import make_settings
from training.jobs.redis_conn import RedisHandle
from training.jobs.scheduler import TrainingScheduler

ADMIN = "health-admin-token-1234"


def metric(client: TestClient, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def test_health_says_redis_is_unreachable_and_answers_503_only_when_strict(tmp_path, redis_prefix):
    settings = make_settings(tmp_path, redis_prefix, REDIS_URL="redis://127.0.0.1:1/0", ADMIN_TOKEN=ADMIN)
    with TestClient(create_app(settings, scheduler=RecordingScheduler())) as client:
        health = client.get("/health")
        assert health.status_code == 200, "Label Studio marks a model failing on non-200; clicks still work"
        body = health.json()
        assert body["status"] == "DEGRADED" and body["redis"]["ok"] is False
        assert any("Redis" in problem for problem in body["problems"])
        assert client.get("/health", params={"strict": "true"}).status_code == 503
        assert client.get("/health", params={"strict": "maybe"}).status_code == 422
        assert metric(client, "samloop_redis_up") == 0
        listing = client.get("/admin/api/projects", headers={"Authorization": f"Bearer {ADMIN}"})
        assert listing.status_code == 200 and listing.json()["health"]["status"] == "DEGRADED"


def scheduler_on(queue_name: str) -> Callable[[RedisHandle, Settings], TrainingScheduler]:
    """The backend's rq scheduler on a queue of the test's own: workers of other tests on the shared Redis
    must neither count nor take its jobs."""
    def factory(handle: RedisHandle, settings: Settings) -> TrainingScheduler:
        scheduler = rq_scheduler(handle, settings)
        scheduler.queue = Queue(queue_name, connection=handle.client)
        return scheduler
    return factory


def test_health_says_no_worker_listens_until_one_does(tmp_path, redis_prefix, redis_client):
    queue_name = f"health-{uuid.uuid4().hex[:8]}"
    settings = make_settings(tmp_path, redis_prefix)
    with TestClient(create_app(settings, scheduler_factory=scheduler_on(queue_name))) as client:
        body = client.get("/health").json()
        assert body["status"] == "DEGRADED" and body["redis"]["ok"] is True
        assert body["training_worker"]["ok"] is False and queue_name in body["problems"][0]
        assert metric(client, "samloop_training_worker_up") == 0
        worker = Worker([Queue(queue_name, connection=redis_client)], connection=redis_client)
        worker.register_birth()
        try:
            wait_for(lambda: client.get("/health").json()["status"] == "UP", timeout=10)
            assert client.get("/health", params={"strict": "true"}).status_code == 200
            assert metric(client, "samloop_training_worker_up") == 1
            assert metric(client, "samloop_training_workers") == 1
        finally:
            worker.register_death()
        wait_for(lambda: client.get("/health").json()["training_worker"]["ok"] is False, timeout=10)


def test_a_stand_in_scheduler_needs_no_worker(tmp_path, redis_prefix):
    settings = make_settings(tmp_path, redis_prefix)
    with TestClient(create_app(settings, scheduler=RecordingScheduler())) as client:
        body = client.get("/health").json()
        assert body["status"] == "UP" and body["problems"] == []
        assert body["training_worker"]["checked"] is False
        assert metric(client, "samloop_redis_up") == 1
