"""Issue 24, faults of ``make run`` (the backend with its embedded Redis and worker), as real processes:

- the embedded redis-server SIGKILLed alone: the backend restarts it on the same files; within 30 s a
  webhook is answered again (not 503) and the switches read as before; the worker carries on;
- then everything SIGKILLed (backend, redis-server, worker), as a power cut or the OOM killer would:
  started again, the switches, the pin, the label config and the project directory are all there;
- (slow) the embedded redis-server SIGKILLed while the worker trains a project from the fake Label
  Studio: the run goes on and its version becomes active.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest
import redis
from rq.job import Job

from testkit.fake_label_studio import FakeLabelStudio
from testkit.waiting import wait_for
from tests.backend.conftest import BRUSH_CONFIG, LS_CREATED, free_port
from tests.training.jobs.test_training_job import ls  # noqa: F401 - a fixture
from training.jobs.keys import ProjectKeys, text
from training.jobs.redis_server import socket_path_for
from training.model.loading import new_adapter_model
from training.model.weights import resolve_checkpoint
from training.registry import LocalRegistry

REPO = Path(__file__).resolve().parents[2]
KEY = f"51.{LS_CREATED}"
SWITCHES = {"predictions": False, "auto_training": False, "pinned_version": 1}


@contextmanager
def backend(data_dir: Path, **overrides: str) -> Iterator[tuple[str, psutil.Process]]:
    """``python -m backend`` as ``make run`` starts it (embedded Redis and worker), in ``data_dir``."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "SAM_MODEL": "vit_t", "SAM_CHECKPOINT": "random",
           "SAM_IMAGE_SIZE": "256", "PRECISION": "fp32", "SAMLOOP_DATA_DIR": str(data_dir), "REDIS_URL": "",
           "LABEL_STUDIO_URL": "", "LABEL_STUDIO_API_KEY": "", "PREENCODE_MAX_TASKS": "0", "OMP_NUM_THREADS": "1",
           "LOG_LEVEL": "WARNING", **overrides}
    process = subprocess.Popen([sys.executable, "-m", "backend", "--host", "127.0.0.1", "--port", str(port)],
                               cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        wait_for(lambda: _answers(url), timeout=120, interval=0.25)
        print(f"backend answered /health {time.monotonic() - started:.1f} s after its start")
        yield url, psutil.Process(process.pid)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def settings_of(url: str, project: str = KEY) -> dict:
    answer = httpx.get(f"{url}/projects/{project}/settings", timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def kill_redis_alone(url: str, data_dir: Path) -> float:
    """SIGKILL the embedded redis-server; seconds until a webhook is answered without 503."""
    pid = int((data_dir / "redis.pid").read_text())
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 51, "created_at": "2024-04-05T19:34:38+00:00"}}

    def accepted() -> bool:
        answer = httpx.post(f"{url}/webhook", json=event, timeout=10)
        assert answer.status_code in (200, 201, 503), answer.text
        return answer.status_code != 503

    wait_for(accepted, timeout=30, interval=0.2)
    return time.monotonic() - killed


def test_embedded_redis_killed_comes_back_and_a_power_cut_loses_nothing(tmp_path):
    data_dir = tmp_path / "data"
    registry = LocalRegistry(data_dir / "adapters")
    for _ in range(2):
        registry.publish(KEY, new_adapter_model(resolve_checkpoint("vit_t", "random"), 256, ["cat"]).to_bytes(), {})
    with backend(data_dir) as (url, process):
        assert httpx.post(f"{url}/setup", json={"project": KEY, "schema": BRUSH_CONFIG}, timeout=30).status_code == 200
        patched = httpx.patch(f"{url}/projects/{KEY}/settings", json=SWITCHES, timeout=10)
        assert patched.status_code == 200, patched.text
        before = settings_of(url)
        assert before["model_version"].endswith("-v1")

        seconds = kill_redis_alone(url, data_dir)
        print(f"webhook answered again {seconds:.1f} s after the embedded Redis was killed")
        assert settings_of(url) == before
        wait_for(lambda: httpx.get(f"{url}/health", timeout=2).json()["status"] == "UP", timeout=30)
        assert httpx.get(f"{url}/health", timeout=2).json()["redis"]["restarts"] == 1

        time.sleep(1.5)  # what was acknowledged more than a second ago is on disk
        everything = [process, *process.children(recursive=True)]
        assert len(everything) >= 3, f"backend, redis-server and worker expected, got {everything}"
        for each in everything:
            each.send_signal(signal.SIGKILL)
        psutil.wait_procs(everything, timeout=10)

    with backend(data_dir) as (url, _):
        after = settings_of(url)
        assert after["settings"] == before["settings"] and after["model_version"] == before["model_version"]
        assert settings_of(url, "51")["project"] == KEY  # the project directory: the bare id means KEY
    # Read with the server stopped and started again on the same files: the label config.
    with backend(data_dir) as (url, _):
        stored = redis.Redis(unix_socket_path=str(socket_path_for(data_dir.resolve())))
        assert stored.get(f"samloop:backend:project:{KEY}:label_config").decode() == BRUSH_CONFIG


def stage_of_run(data_dir: Path, project: str) -> str | None:
    """The stage the project's running job reports, read from the embedded Redis as an admin would."""
    client = redis.Redis(unix_socket_path=str(socket_path_for(data_dir.resolve())), socket_timeout=2)
    try:
        job_id = text(client.get(ProjectKeys("samloop", project).lock))
        return Job.fetch(job_id, connection=client).get_meta(refresh=False).get("stage") if job_id else None
    except redis.RedisError:
        return None
    finally:
        client.close()


@pytest.mark.slow
def test_embedded_redis_killed_in_the_middle_of_a_run_and_the_loop_goes_on(tmp_path, ls: FakeLabelStudio):  # noqa: F811
    data_dir = tmp_path / "data"
    env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.legacy_token, "SAM_IMAGE_SIZE": "64",
           "TRAIN_MAX_SECONDS": "20", "TRAIN_MIN_ANNOTATIONS": "1"}
    with backend(data_dir, **env) as (url, _):
        answer = httpx.post(f"{url}/webhook", json={"action": "START_TRAINING", "project": {"id": 7}}, timeout=10)
        assert answer.status_code == 201, answer.text
        wait_for(lambda: stage_of_run(data_dir, "7") == "training", timeout=180, interval=0.2)
        started = time.monotonic()
        os.kill(int((data_dir / "redis.pid").read_text()), signal.SIGKILL)

        def active() -> str | None:
            answer = httpx.get(f"{url}/versions", params={"project": "7"}, timeout=10)
            return answer.json()["active"].get("7") if answer.status_code == 200 else None

        version = wait_for(active, timeout=300, interval=1.0)
        print(f"version {version} active {time.monotonic() - started:.0f} s after Redis was killed mid-run")
        wait_for(lambda: httpx.get(f"{url}/health", timeout=2).json()["status"] == "UP", timeout=30)
