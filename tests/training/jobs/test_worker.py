"""``python -m training.jobs.worker`` and the embedded Redis + worker used by ``make run``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import redis
from rq import Queue, SimpleWorker, SpawnWorker, Worker
from rq.job import Job

from tests.training.jobs.test_scheduler import FAKE_JOB, REPO, redis_server, wait_for
from training.jobs.embedded import EmbeddedTraining
from training.jobs.redis_conn import connect, open_redis
from training.jobs.scheduler import DEFAULT_QUEUE, TrainingScheduler
from training.jobs.worker import build_worker


def test_worker_without_redis_url_explains_what_to_do():
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    done = subprocess.run([sys.executable, "-m", "training.jobs.worker"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "REDIS_URL is not set" in done.stderr and "make run" in done.stderr


def test_build_worker_classes_and_bad_input():
    with redis_server() as url:
        conn = connect(url)
        assert type(build_worker(conn, ["a", "b"])) is Worker
        assert isinstance(build_worker(conn, ["a"], "spawn"), SpawnWorker)
        simple = build_worker(conn, ["high", "low"], "simple")
        assert isinstance(simple, SimpleWorker) and simple.queue_names() == ["high", "low"]
        with pytest.raises(ValueError, match="'threads'"):
            build_worker(conn, ["a"], "threads")
        with pytest.raises(ValueError, match="queue"):
            build_worker(conn, [])


def test_redis_url_validation_and_env_default(monkeypatch):
    with pytest.raises(ValueError, match="REDIS_URL must start with"):
        connect("localhost:6379")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    handle = open_redis()
    assert handle.url == "redis://127.0.0.1:1/0" and not handle.embedded


def test_forking_worker_runs_a_queued_job_at_the_niceness_asked_for():
    with redis_server() as url:
        conn = connect(url)
        sched = TrainingScheduler(conn, {}, queue_name="samloop-worker-test", job_func=FAKE_JOB,
                                  debounce_seconds=0, max_debounce_seconds=1)
        queued = sched.schedule("4", "START_TRAINING", True)
        own = os.getpriority(os.PRIO_PROCESS, 0)
        done = subprocess.run([sys.executable, "-m", "training.jobs.worker", "--url", url, "--queues",
                               "samloop-worker-test", "--burst", "--log-level", "WARNING"],
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "SAMLOOP_WORKER_NICE": "7"},
                              timeout=120)
        assert done.returncode == 0
        assert Job.fetch(queued["job_id"], connection=conn).get_status() == "finished"
        run = json.loads(conn.lrange("test:runs", 0, -1)[0])
        assert run["project"] == "4" and run["niceness"] == min(19, own + 7)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_requested_stop_ends_the_worker_process(stop):
    # The process starts a fresh worker when one stops on an error: a stop that was asked for must still end it.
    with redis_server() as url:
        worker = subprocess.Popen([sys.executable, "-m", "training.jobs.worker", "--url", url, "--queues",
                                   "samloop-stop-test", "--log-level", "INFO"], cwd=REPO,
                                  env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: connect(url).smembers("rq:workers"), timeout=60)
            time.sleep(1.0)  # rq registers the worker a moment before it installs its signal handlers
            worker.send_signal(stop)
            assert worker.wait(timeout=30) == 0
            assert "starting a fresh one" not in worker.stderr.read()
        finally:
            if worker.poll() is None:
                worker.kill()


@pytest.mark.parametrize("value", ["-5", "20", "low"])
def test_worker_refuses_a_niceness_out_of_range(value):
    done = subprocess.run([sys.executable, "-m", "training.jobs.worker", "--url", "redis://127.0.0.1:1",
                           "--nice", value], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--nice" in done.stderr and "0 (normal) to 19" in done.stderr


def test_embedded_redis_and_worker_run_jobs_restart_and_stop(tmp_path):
    services = EmbeddedTraining(tmp_path / "data", env={"PYTHONPATH": str(REPO)}, restart_delays=[0.2])
    services.start()
    try:
        assert services.redis.embedded and services.redis_url.startswith("unix://")
        assert (tmp_path / "data").is_dir()
        conn = services.redis.client
        sched = TrainingScheduler(conn, {}, queue_name=DEFAULT_QUEUE, job_func=FAKE_JOB, debounce_seconds=0,
                                  max_debounce_seconds=1)
        first = sched.schedule("9", "ANNOTATION_CREATED", False)["job_id"]
        wait_for(lambda: Job.fetch(first, connection=conn).get_status() == "finished", timeout=90, interval=0.2)

        # A worker that dies is replaced, and the replacement takes the next job.
        pid = services.worker_pid
        os.killpg(pid, signal.SIGKILL)
        wait_for(lambda: services.worker_pid not in (None, pid), timeout=30)
        assert services.restarts == 1
        second = sched.schedule("9", "ANNOTATION_CREATED", False)["job_id"]
        wait_for(lambda: Job.fetch(second, connection=conn).get_status() == "finished", timeout=90, interval=0.2)
        assert Queue(DEFAULT_QUEUE, connection=conn).count == 0
        url, worker_pid = services.redis_url, services.worker_pid
    finally:
        services.stop()
    assert services.worker_pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)
    with pytest.raises(redis.ConnectionError):
        connect(url).ping()


def torch_work() -> dict:
    """A job that runs torch ops big enough for its thread pool, as training does."""
    peft_inherited = "peft" in sys.modules  # before anything here could import it
    import torch

    from training.jobs.training_job import _MODELS

    x = torch.randn(512, 512)
    conv = torch.nn.Conv2d(32, 32, 3)(torch.randn(1, 32, 96, 96))
    return {"threads": torch.get_num_threads(), "preloaded": _MODELS.built, "peft_inherited": peft_inherited,
            "value": float((x @ x).abs().sum() + conv.abs().sum())}


def test_a_forked_job_runs_torch_after_the_worker_preloaded_the_base_model():
    """The worker builds the base model before forking jobs; an OpenMP thread pool started in the parent
    would leave every forked job hanging at its first parallel op (seen end to end)."""
    with redis_server() as url:
        conn = connect(url)
        queued = Queue("samloop-preload-test", connection=conn).enqueue(
            "tests.training.jobs.test_worker.torch_work", job_timeout=300)
        env = {**os.environ, "PYTHONPATH": str(REPO), "SAM_CHECKPOINT": "random", "SAM_MODEL_TYPE": "vit_t",
               "SAM_IMAGE_SIZE": "256", "TORCH_NUM_THREADS": "2"}
        done = subprocess.run([sys.executable, "-m", "training.jobs.worker", "--url", url, "--queues",
                               "samloop-preload-test", "--burst"], cwd=REPO, env=env, timeout=150,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "base model preloaded" in done.stderr
        job = Job.fetch(queued.id, connection=conn)
        assert job.get_status() == "finished", done.stderr[-3000:]
        # The job got the parent's model and all the cores, not a single-threaded torch.
        assert job.return_value()["preloaded"] == 1 and job.return_value()["threads"] == os.cpu_count()
        # peft (with transformers) came with the fork too: importing it in each job took 1.8 s of a run.
        assert job.return_value()["peft_inherited"] is True
