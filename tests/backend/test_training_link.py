"""The webhook drives the real rq TrainingScheduler; embedded Redis runs its own worker process."""

from __future__ import annotations

import os
import time

import pytest
import redis
from fastapi.testclient import TestClient
from rq import Queue, Worker

from backend.app import create_app
from backend.training_link import job_settings
from tests.backend.conftest import BRUSH_CONFIG, ls_id, make_settings
from training.jobs.scheduler import TrainingScheduler


def test_job_settings_are_valid_training_job_settings(tmp_path):
    jobs = pytest.importorskip("training.jobs.training_job")
    settings = make_settings(tmp_path, "prefix-x", LABEL_STUDIO_URL="http://ls:8080", LABEL_STUDIO_API_KEY="key")
    values = job_settings(settings)
    assert values["label_studio_api_key"] == ""  # secrets stay out of Redis job arguments
    parsed = jobs.JobSettings.resolve(values, environ={"DEVICE": "cpu"})
    assert parsed.image_size == 256 and parsed.registry == "" and parsed.redis_prefix == "prefix-x"
    assert parsed.data_dir == str(tmp_path.resolve())
    assert parsed.device == "cpu"  # machine-local: the worker's own environment decides
    remote = job_settings(make_settings(tmp_path, "p", SAMLOOP_ADAPTER_STORE="redis"))
    assert remote["registry"] == "redis" and remote["data_dir"] == ""  # the worker keeps its own data dir


def test_burst_of_webhooks_queues_one_rq_job(tmp_path, redis_prefix, redis_client):
    settings = make_settings(tmp_path, redis_prefix)
    queue_name = f"{redis_prefix}-training"
    scheduler = TrainingScheduler(redis_client, {"image_size": 256}, queue_name=queue_name, prefix=redis_prefix,
                                  job_func="tests.backend.test_training_link.never_run")
    try:
        with TestClient(create_app(settings, scheduler=scheduler)) as client:
            answers = [client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 12},
                                                     "annotation": {"id": k}, "task": {"id": k}}).json()
                       for k in range(6)]
        statuses = [a["training"]["status"] for a in answers]
        assert statuses == ["queued"] + ["coalesced"] * 5
        assert len({a["training"]["job_id"] for a in answers}) == 1
        assert Queue(queue_name, connection=redis_client).count == 1
    finally:
        queue = Queue(queue_name, connection=redis_client)
        queue.empty()
        queue.delete(delete_jobs=True)


def never_run(project, settings):  # pragma: no cover - the job is only queued
    raise AssertionError("not meant to run")


def test_embedded_redis_starts_and_stops_a_worker(tmp_path, monkeypatch):
    settings = make_settings(tmp_path, "samloop", REDIS_URL="")
    with TestClient(create_app(settings)) as client:
        services = client.app.state.services
        assert services.redis.embedded and services.redis.url.startswith("unix://")
        assert services.worker is not None
        deadline = time.monotonic() + 60
        workers = []
        while time.monotonic() < deadline and not workers:
            workers = Worker.all(connection=services.redis.client)
            time.sleep(0.2)
        assert workers, "the training worker registered with the embedded Redis"
        assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}}).status_code == 201
        pid = services.worker.worker_pid
        # Training yields the CPU to clicks: the worker (and the jobs it forks) run at SAMLOOP_WORKER_NICE.
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
    with pytest.raises(ProcessLookupError):  # stopped with the app
        os.kill(pid, 0)
    with pytest.raises(redis.RedisError):
        redis.Redis.from_url(services.redis.url, socket_connect_timeout=0.5).ping()


def test_a_projects_adapter_kind_reaches_its_training_job(tmp_path, redis_prefix, redis_client):
    from rq.job import Job

    from backend.training_link import rq_scheduler

    settings = make_settings(tmp_path, redis_prefix)
    with TestClient(create_app(settings, scheduler_factory=rq_scheduler)) as client:
        services = client.app.state.services
        queue = services.scheduler.queue
        try:
            assert client.post("/setup", json={"project": "21.1", "schema": BRUSH_CONFIG,
                                               "extra_params": {"adapter": "encoder"}}).status_code == 200
            bad = client.patch("/projects/21/settings", json={"adapter": "big"})
            assert bad.status_code == 422 and "adapter" in bad.json()["detail"]
            kinds = {}
            for project in ("21", "22"):
                answer = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": ls_id(project)}})
                job = Job.fetch(answer.json()["training"]["job_id"], connection=redis_client)
                kinds[project] = job.args[1]["adapter_kind"]
            assert kinds == {"21": "encoder", "22": "decoder"}
        finally:
            queue.empty()
            queue.delete(delete_jobs=True)
