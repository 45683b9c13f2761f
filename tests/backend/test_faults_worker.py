"""Issue 16, faults: the training worker is killed (SIGKILL) at each stage of a job. The registry and
the active adapter come out intact, nothing half-written is left, and the project trains again later.

The worker is the real ``python -m training.jobs.worker`` in its own process group, against a fake
Label Studio and a private Redis. To kill it *at* a stage rather than somewhere near one, it runs
through a small wrapper that, on reaching the stage, writes a marker file and sleeps: a delay hook
in the job's progress reporting (and, for "publish-write", half-way through writing the new weights
file), nothing mocked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler

from tests.training.jobs.test_scheduler import REPO, wait_for
from tests.training.jobs.test_training_job import PROJECT, QUEUE, conn, ls, make_scheduler, settings_for  # noqa: F401
from training.model.artifact import read_artifact
from training.model.loading import new_adapter_model
from training.model.weights import resolve_checkpoint
from training.registry import open_registry

# Runs the worker with a pause at STAGE (and MESSAGE part), announced through the MARKER file.
PAUSING_WORKER = r"""
import os, sys, time
from pathlib import Path
import training.jobs.progress as progress
import training.registry.local as local

stage, part, marker = os.environ["PAUSE_STAGE"], os.environ["PAUSE_MESSAGE"], Path(os.environ["PAUSE_MARKER"])

def pause():
    marker.write_text(str(os.getpid()))
    time.sleep(600)

original_stage = progress.JobProgress.stage
def paused_stage(self, name, message, **fields):
    original_stage(self, name, message, **fields)
    if name == stage and part in message:
        pause()
progress.JobProgress.stage = paused_stage

original_write = local._write_durably
def half_written(path, data):
    if stage == "publish-write" and path.name == local.WEIGHTS_FILE:
        with open(path, "wb") as handle:
            handle.write(data[: len(data) // 2])
            handle.flush()
            os.fsync(handle.fileno())
        pause()
    original_write(path, data)
local._write_durably = half_written

from training.jobs.worker import main
sys.exit(main(sys.argv[1:]))
"""

STAGES = [
    ("exporting", ""),
    ("loading", ""),
    ("evaluating", "active version"),  # scoring the active adapter on held-out tasks
    ("encoding", ""),
    ("training", ""),
    ("evaluating", "candidate"),
    ("publishing", ""),
    ("publish-write", ""),  # inside the registry's write of the new version's weights
]


def start_pausing_worker(connection, stage: str, part: str, marker: Path) -> subprocess.Popen:
    url = f"unix://{connection.connection_pool.connection_kwargs['path']}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PAUSE_STAGE": stage, "PAUSE_MESSAGE": part,
           "PAUSE_MARKER": str(marker), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", PAUSING_WORKER, "--url", url, "--queues", QUEUE,
                             "--worker-class", "simple", "--log-level", "WARNING"],
                            cwd=REPO, env=env, start_new_session=True)


def staging_dirs(adapter_dir: Path) -> list[Path]:
    return [p for p in (adapter_dir / PROJECT).iterdir() if p.name.startswith(".tmp-")]


def assert_registry_intact(store, adapter_dir: Path, classes: list[str], stage: str) -> None:
    assert [v.version for v in store.versions(PROJECT)] == [1] and store.active_version(PROJECT) == 1
    info, data = store.load(PROJECT)
    assert info.version == 1 and read_artifact(data).header.class_names == classes
    # A kill inside the write leaves its staging directory (no process can clean up after SIGKILL): it is
    # never listed as a version, and a later publish removes it once stale. Before the write: nothing.
    assert len(staging_dirs(adapter_dir)) == (1 if stage == "publish-write" else 0)


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "part"), STAGES, ids=[f"{s}-{p or 'any'}" for s, p in STAGES])
def test_worker_killed_at_a_stage_leaves_the_registry_intact_and_the_project_trains_later(
        conn, ls, tmp_path, stage, part):  # noqa: F811 - the fixtures imported above
    store = open_registry(str(tmp_path / "adapters"))
    classes = ["disc", "box"]
    store.publish(PROJECT, new_adapter_model(resolve_checkpoint("vit_t", "random"), 64, classes).to_bytes(),
                  {"note": "before"})
    sched = make_scheduler(conn, settings_for(ls, tmp_path), retry_intervals=(1,))
    queued = sched.schedule(PROJECT, "ANNOTATION_CREATED", False)
    marker = tmp_path / "paused"
    worker = start_pausing_worker(conn, stage, part, marker)
    try:
        wait_for(marker.exists, timeout=180, interval=0.1)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    assert_registry_intact(store, tmp_path / "adapters", classes, stage)

    # Later: the training lock expires with its heartbeat, rq's maintenance finds the abandoned job and
    # schedules its retry, and a worker trains the project to a new version.
    wait_for(lambda: conn.get(sched.keys(PROJECT).lock) is None, timeout=30)
    StartedJobRegistry(QUEUE, connection=conn).cleanup(timestamp=time.time() + 3600)
    job = Job.fetch(queued["job_id"], connection=conn)
    assert job.get_status() == "scheduled"
    time.sleep(1.5)  # the retry interval
    # The dead worker's scheduler lock would expire on its own (rq's lock timeout, minutes): expire it now.
    conn.delete(RQScheduler.get_locking_key(QUEUE))
    SimpleWorker([Queue(QUEUE, connection=conn)], connection=conn).work(burst=True, with_scheduler=True)
    job = Job.fetch(queued["job_id"], connection=conn)
    assert job.get_status() == "finished", job.get_status()
    assert job.return_value()["version"] == 2
    assert [v.version for v in store.versions(PROJECT)] == [1, 2]
    for leftover in staging_dirs(tmp_path / "adapters"):  # an hour later, the next publish sweeps it
        os.utime(leftover, (time.time() - 7200, time.time() - 7200))
    store.publish(PROJECT, new_adapter_model(resolve_checkpoint("vit_t", "random"), 64, classes).to_bytes(), {})
    assert staging_dirs(tmp_path / "adapters") == []
