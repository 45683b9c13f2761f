"""Issue 24: annotations whose webhooks were lost are learned. At start-up, and when Redis comes back after
an outage (webhooks answered 503 meanwhile), the backend asks Label Studio (the stand-in, for real over
HTTP) and queues a run for each project with changes training has not covered; no other project.

Real Redis (the shared one, and a redis-server the test kills and restarts), the real rq scheduler on a
queue of the test's own (no worker: the queued job is what is checked).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis
from fastapi.testclient import TestClient
from rq import Queue
from rq.job import Job

from backend.app import create_app
from backend.project_settings import ProjectSettingsStore
from backend.recovery import Recovery
from testkit.fake_label_studio import FakeLabelStudio
from testkit.waiting import wait_for
from tests.backend.conftest import BRUSH_CONFIG, LS_CREATED, free_port, make_settings
from tests.backend.test_faults_redis import RestartableRedis, restartable  # noqa: F401 - a fixture
from tests.backend.test_health import scheduler_on
from training.jobs.keys import ProjectKeys
from training.jobs.reconcile import MISSED_EVENTS

CREATED_ISO = datetime.fromtimestamp(LS_CREATED, UTC).isoformat()


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


@pytest.fixture
def queue_name(redis_client) -> Iterator[str]:
    name = f"recovery-{uuid.uuid4().hex[:8]}"
    yield name
    Queue(name, connection=redis_client).delete(delete_jobs=True)


def queued_trigger(client: redis.Redis, prefix: str, project: str) -> str | None:
    job_id = client.get(ProjectKeys(prefix, project).queued)
    return Job.fetch(job_id.decode(), connection=client).meta.get("trigger") if job_id else None


def settings_for(tmp_path, prefix: str, ls: FakeLabelStudio, **overrides):
    values = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.legacy_token, "PREENCODE_MAX_TASKS": 0}
    return make_settings(tmp_path, prefix, **(values | overrides))


def test_at_start_up_projects_annotated_while_samloop_was_down_are_scheduled(tmp_path, redis_prefix, redis_client,
                                                                            queue_name):
    now = time.time()
    store = ProjectSettingsStore(redis_client, redis_prefix)
    with FakeLabelStudio() as ls:
        # 31 and 32 trained an hour ago; 31 was annotated since, 32 not; 33 too, but its auto-training is off.
        for number in (31, 32, 33):
            key = f"{number}.{LS_CREATED}"
            ls.add_project(number, BRUSH_CONFIG, created_at=CREATED_ISO)
            annotated = now - 60 if number != 32 else now - 7200
            ls.add_task(number, {"image": "/data/upload/x.png"}, [{"result": [], "updated_at": iso(annotated)}])
            store.remember_project(key, BRUSH_CONFIG)
            redis_client.set(ProjectKeys(redis_prefix, key).covered_until, f"{now - 3600:.6f}")
        store.update(f"33.{LS_CREATED}", {"auto_training": False})
        settings = settings_for(tmp_path, redis_prefix, ls)
        with TestClient(create_app(settings, scheduler_factory=scheduler_on(queue_name))) as client:
            recovery = client.app.state.services.recovery
            wait_for(lambda: recovery.idle() and recovery.last is not None, timeout=30)
            outcomes = {o["project"]: o["status"] for o in recovery.last["projects"]}
    assert outcomes == {f"31.{LS_CREATED}": "scheduled", f"32.{LS_CREATED}": "up_to_date"}
    assert queued_trigger(redis_client, redis_prefix, f"31.{LS_CREATED}") == MISSED_EVENTS
    assert queued_trigger(redis_client, redis_prefix, f"32.{LS_CREATED}") is None
    assert queued_trigger(redis_client, redis_prefix, f"33.{LS_CREATED}") is None


def test_an_annotation_whose_webhook_got_503_is_trained_when_redis_comes_back(
        tmp_path, redis_prefix, restartable: RestartableRedis, queue_name):  # noqa: F811 - the fixture
    key = f"41.{LS_CREATED}"
    with FakeLabelStudio() as ls:
        ls.add_project(41, BRUSH_CONFIG, created_at=CREATED_ISO)
        settings = settings_for(tmp_path, redis_prefix, ls, REDIS_URL=restartable.url)
        with TestClient(create_app(settings, scheduler_factory=scheduler_on(queue_name))) as client:
            services = client.app.state.services
            setup = client.post("/setup", json={"project": key, "schema": BRUSH_CONFIG})
            assert setup.status_code == 200, setup.text
            wait_for(lambda: services.recovery.idle() and services.recovery.last is not None, timeout=30)
            restartable.kill()
            ls.add_task(41, {"image": "/data/upload/x.png"}, [{"result": [], "updated_at": iso(time.time())}])
            event = {"action": "ANNOTATION_CREATED", "project": {"id": 41, "created_at": CREATED_ISO}}
            lost = client.post("/webhook", json=event)
            assert lost.status_code == 503  # Label Studio will not send it again
            wait_for(lambda: client.get("/health").json()["redis"]["ok"] is False, timeout=5)
            restartable.start()
            wait_for(lambda: (services.recovery.last or {}).get("reason") == "Redis came back", timeout=30)
            assert client.get("/health").json()["redis"]["ok"] is True
    conn = redis.Redis.from_url(restartable.url)
    assert queued_trigger(conn, redis_prefix, key) == MISSED_EVENTS
    Queue(queue_name, connection=conn).delete(delete_jobs=True)


def test_label_studio_down_during_recovery_is_tried_again_and_unreachable_is_tried_once(
        tmp_path, redis_prefix, redis_client, queue_name):
    store = ProjectSettingsStore(redis_client, redis_prefix)
    keys = [f"{number}.{LS_CREATED}" for number in (61, 62)]
    with FakeLabelStudio() as ls:
        for number, key in zip((61, 62), keys, strict=True):
            ls.add_project(number, BRUSH_CONFIG, created_at=CREATED_ISO)
            ls.add_task(number, {"image": "/data/upload/x.png"}, [{"result": [], "updated_at": iso(time.time())}])
            store.remember_project(key, BRUSH_CONFIG)
        ls.fail("/api/projects", 502)  # a proxy answering for a Label Studio that is down
        settings = settings_for(tmp_path, redis_prefix, ls)
        with TestClient(create_app(settings, scheduler_factory=scheduler_on(queue_name))) as client:
            services = client.app.state.services
            services.recovery.close()  # this test's own, with a short retry delay
            recovery = Recovery(services, retry_delays=(0.5,))
            try:
                recovery.request("test")
                wait_for(lambda: recovery.last is not None, timeout=60)
                assert {o["status"] for o in recovery.last["projects"]} == {"failed"}
                ls.state.faults.clear()
                wait_for(lambda: recovery.last["reason"].startswith("retry"), timeout=30)
                wait_for(recovery.idle, timeout=30)
                assert {o["status"] for o in recovery.last["projects"]} == {"scheduled"}
            finally:
                recovery.close()
        assert all(queued_trigger(redis_client, redis_prefix, key) == MISSED_EVENTS for key in keys)
        redis_client.delete(*(ProjectKeys(redis_prefix, key).queued for key in keys))  # as if those jobs ran

        down = settings_for(tmp_path, redis_prefix, ls, LABEL_STUDIO_URL=f"http://127.0.0.1:{free_port()}")
        with TestClient(create_app(down, scheduler_factory=scheduler_on(queue_name))) as client:
            recovery = client.app.state.services.recovery
            wait_for(lambda: recovery.idle() and recovery.last is not None, timeout=60)
            first, second = recovery.last["projects"]
            assert first["status"] == "unreachable" and "no response" in first["reason"]
            assert second == {"project": keys[1], "status": "unreachable", "reason": "not tried"}
