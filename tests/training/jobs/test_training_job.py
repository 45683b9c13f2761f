"""The training job end to end: fake Label Studio -> rq on a private Redis -> registry.

Real model code throughout (vit_t with SAM_CHECKPOINT=random at 64 px, a handful of steps), so
these tests check the plumbing and the promotion rules, not learning quality.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.registry import StartedJobRegistry

from testkit.fake_label_studio import FakeLabelStudio
from testkit.ls_annotations import (
    BRUSH_POLYGON_CONFIG,
    box_polygon,
    brush_region,
    png_bytes,
    polygon_region,
    synthetic_scene,
)
from tests.training.jobs.test_scheduler import REPO, redis_server, wait_for
from training.jobs.redis_conn import connect
from training.jobs.scheduler import TrainingScheduler
from training.model.artifact import read_artifact
from training.model.loading import new_adapter_model
from training.model.weights import resolve_checkpoint
from training.pipeline.settings import JobSettings, step_budget
from training.registry import open_registry

QUEUE = "samloop-jobs-test"
PROJECT = "7"


@pytest.fixture
def conn():
    with redis_server() as url:
        yield connect(url)


@pytest.fixture
def ls():
    with FakeLabelStudio() as server:
        server.add_project(7, BRUSH_POLYGON_CONFIG)
        for seed in range(6):
            image, masks = synthetic_scene(seed, size=(48, 64))
            url = server.add_image(7, f"scene{seed}.png", png_bytes(image))
            result = [brush_region(masks["disc"], "disc"),
                      polygon_region(box_polygon(masks["box"]), image.shape[:2], "box")]
            server.add_task(7, {"image": url}, [{"result": result}])
        yield server


def settings_for(ls: FakeLabelStudio, tmp_path: Path, **overrides) -> dict:
    return JobSettings(
        label_studio_url=ls.url, label_studio_api_key=ls.legacy_token, model_type="vit_t", checkpoint="random",
        image_size=64, data_dir=str(tmp_path / "data"), registry=str(tmp_path / "adapters"),
        steps_per_image=1, min_steps=2, max_steps=3, train_max_seconds=30, batch_size=2,
        ls_retries=1, ls_backoff=0.01, lock_ttl_seconds=5,
        # One task in three is a held-out candidate: tasks 1, 2 and 5 of the fixture's six (a stable hash).
        holdout_every=3,
    ).to_dict() | overrides


def make_scheduler(conn, settings: dict, **kw) -> TrainingScheduler:
    return TrainingScheduler(conn, settings, queue_name=QUEUE, debounce_seconds=0, max_debounce_seconds=1,
                             retry_intervals=kw.pop("retry_intervals", (0,)), **kw)


def run_queue(conn) -> None:
    SimpleWorker([Queue(QUEUE, connection=conn)], connection=conn).work(burst=True)


def registry(tmp_path: Path):
    return open_registry(str(tmp_path / "adapters"))


def resubmit(ls: FakeLabelStudio, task_id: int) -> None:
    """The task's annotation saved again (same regions, a new annotation id and time)."""
    _, task = ls._find(task_id)
    ls.set_annotations(task_id, [{"result": task["annotations"][0]["result"]}])


def add_broken_tasks(ls: FakeLabelStudio) -> tuple[int, int]:
    corrupt = brush_region(np.ones((48, 64), bool), "disc")
    corrupt["value"]["rle"] = corrupt["value"]["rle"][:4] + [7, 7]
    url = ls.add_image(7, "c.png", png_bytes(synthetic_scene(99, size=(48, 64))[0]))
    bad = ls.add_task(7, {"image": url}, [{"result": [corrupt]}])
    missing = ls.add_task(7, {"image": "/data/upload/7/deleted.png"}, [{"result": []}])
    return bad, missing


# ----- settings --------------------------------------------------------------------------------------


def test_settings_validate_and_resolve_from_the_environment():
    with pytest.raises(ValueError, match="unknown job setting.*colour"):
        JobSettings.from_dict({"colour": "red"})
    with pytest.raises(ValueError, match="image_size must be a multiple of 16"):
        JobSettings(image_size=100)
    with pytest.raises(ValueError, match="unknown training option"):
        JobSettings(train_options={"momentum": 0.9})
    env = {"LABEL_STUDIO_URL": "http://ls:8080", "LABEL_STUDIO_API_KEY": "from-worker", "SAM_IMAGE_SIZE": "512",
           "TRAIN_MAX_SECONDS": "120", "TRAIN_MIN_ANNOTATIONS": "3"}
    resolved = JobSettings.resolve({"label_studio_url": "http://backend-view:8080", "label_studio_api_key": ""}, env)
    assert resolved.label_studio_url == "http://backend-view:8080"  # the job's value wins
    assert resolved.label_studio_api_key == "from-worker"  # the worker fills what the job left empty
    assert (resolved.image_size, resolved.train_max_seconds, resolved.min_annotations) == (512, 120.0, 3)
    assert resolved.job_timeout() > resolved.train_max_seconds + resolved.max_debounce_seconds


def test_the_default_job_path_names_the_real_job():
    from rq.utils import import_attribute

    from training.jobs.scheduler import DEFAULT_JOB
    from training.jobs.training_job import run_training_job

    assert import_attribute(DEFAULT_JOB) is run_training_job


def test_scheduler_and_settings_import_without_torch():
    probe = "import sys, training.jobs.scheduler, training.pipeline.settings; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def test_step_budget_grows_with_the_dataset_within_bounds():
    settings = JobSettings(steps_per_image=10, min_steps=30, max_steps=200)
    assert [step_budget(n, settings) for n in (1, 5, 50)] == [30, 50, 200]


# ----- the job through rq ------------------------------------------------------------------------------------


def test_job_trains_publishes_and_keeps_a_better_active_version(conn, ls, tmp_path):
    bad, missing = add_broken_tasks(ls)
    settings = settings_for(ls, tmp_path)
    sched = make_scheduler(conn, settings)
    queued = sched.schedule(PROJECT, "ANNOTATION_CREATED", False)
    run_queue(conn)

    job = Job.fetch(queued["job_id"], connection=conn)
    outcome = job.return_value()
    assert job.get_status() == "finished" and outcome["status"] == "promoted"
    assert job.timeout == JobSettings.from_dict(sched.job_settings).job_timeout() > settings["train_max_seconds"]
    assert outcome["version"] == 1 and outcome["active_version"] == 1
    assert {s["task"] for s in outcome["export"]["skipped"]} == {bad, missing}
    assert job.get_meta()["stage"] == "done"
    store = registry(tmp_path)
    info, weights = store.load(PROJECT)
    assert info.version == 1 and info.active and len(weights) > 1000
    assert info.metadata["data"]["holdout_ids"] == [1, 2, 5]
    assert info.metadata["promoted"] is True and info.metadata["metrics"]["candidate"]["images"] == 3
    assert info.metadata["warm_start_from"] is None
    assert sorted(s["task"] for s in info.metadata["data"]["skipped"]) == sorted([bad, missing])
    assert sched.status(PROJECT)["last_run"]["status"] == "promoted"

    # A new label appears in the config; the next candidate must beat the active one by 0.5 mean
    # IoU (negative tolerance), which a few steps from random weights cannot: published, not promoted.
    ls.add_project(7, BRUSH_POLYGON_CONFIG.replace('<Label value="box" background="#0000ff"/>',
                                                   '<Label value="box" background="#0000ff"/><Label value="cup"/>'))
    strict = make_scheduler(conn, settings | {"promote_tolerance": -0.5})
    second = strict.schedule(PROJECT, "ANNOTATION_UPDATED", False)
    run_queue(conn)
    outcome = Job.fetch(second["job_id"], connection=conn).return_value()
    assert outcome["status"] == "not_promoted" and outcome["version"] == 2 and outcome["active_version"] == 1
    versions = {v.version: v for v in store.versions(PROJECT)}
    assert store.active_version(PROJECT) == 1 and not versions[2].active
    meta = versions[2].metadata
    assert meta["warm_start_from"] == 1 and meta["class_names"] == ["disc", "box", "cup"]
    assert meta["metrics"]["active_version"] == 1
    assert set(meta["metrics"]["candidate"]) >= {"mean_iou", "per_class"}
    assert set(meta["metrics"]["active"]) >= {"mean_iou", "per_class"}
    assert "not promoted" in meta["decision"]


def test_a_candidate_is_promoted_over_an_active_version_on_held_out_tasks(conn, ls, tmp_path):
    settings = settings_for(ls, tmp_path)
    first = make_scheduler(conn, settings).schedule(PROJECT, "ANNOTATION_CREATED", False)
    run_queue(conn)
    assert Job.fetch(first["job_id"], connection=conn).return_value()["status"] == "promoted"
    resubmit(ls, 3)  # an annotator edits a training task: the next run has something new to learn
    # Any candidate within 1.0 mean IoU of the active version is promoted: the "promoted" branch.
    lenient = make_scheduler(conn, settings | {"promote_tolerance": 1.0})
    second = lenient.schedule(PROJECT, "ANNOTATION_UPDATED", False)
    run_queue(conn)
    job = Job.fetch(second["job_id"], connection=conn)
    outcome = job.return_value()
    assert outcome["status"] == "promoted" and outcome["version"] == 2 and outcome["active_version"] == 2
    store = registry(tmp_path)
    info, data = store.load(PROJECT)
    metrics = info.metadata["metrics"]
    assert info.version == 2 and info.active and info.metadata["warm_start_from"] == 1
    assert metrics["evaluated_on"] == "holdout" and metrics["active_version"] == 1
    assert metrics["active"] is not None and "held-out mean IoU" in info.metadata["decision"]
    # The active version's held-out scores were read back from its metadata, not computed again.
    assert metrics["active_scored"] == {"read_back": 3, "computed": 0}
    assert info.metadata["plan"]["kind"] == "incremental" and info.metadata["plan"]["new_tasks"] == 1
    # Clicks: both decoders scored on the held-out objects, the choice recorded in the version and its file.
    clicks = metrics["clicks"]
    assert clicks["decoder"] in ("adapter", "base") and clicks["base"]["objects"] >= 1
    assert clicks["candidate"]["objects"] == clicks["base"]["objects"]
    # The gate's own budget: at most click_max_clicks a object, and only IoU after one click (ties need it).
    assert 1 <= clicks["candidate"]["noc90"] <= clicks["candidate"]["max_clicks"] == JobSettings().click_max_clicks
    assert set(clicks["candidate"]["iou_at"]) == {"1"}
    assert read_artifact(data).header.extra["clicks_decoder"] == clicks["decoder"]
    # The same images again: every embedding came from the store, none was encoded.
    assert job.get_meta()["encoded"] == 0


def test_too_few_annotations_skip_without_loading_a_model(conn, ls, tmp_path):
    sched = make_scheduler(conn, settings_for(ls, tmp_path), min_annotations=10)
    queued = sched.schedule(PROJECT, "START_TRAINING", True)
    run_queue(conn)
    outcome = Job.fetch(queued["job_id"], connection=conn).return_value()
    assert outcome["status"] == "skipped" and "TRAIN_MIN_ANNOTATIONS=10" in outcome["reason"]
    assert registry(tmp_path).versions(PROJECT) == []


def test_label_studio_failures_are_retried_then_fail_clearly(conn, ls, tmp_path):
    ls.fail("/api/projects/7/export", 500)
    sched = make_scheduler(conn, settings_for(ls, tmp_path))
    queued = sched.schedule(PROJECT, "ANNOTATION_CREATED", False)
    run_queue(conn)  # the job, then its rq retry (interval 0)
    job = Job.fetch(queued["job_id"], connection=conn)
    assert job.get_status() == "failed"
    error = job.latest_result().exc_string
    assert "HTTP 500" in error and f"{ls.url}/api/projects/7/export" in error
    assert len(ls.requests_to("/api/projects/7/export")) == 4  # 2 attempts per run, 2 runs
    last = sched.status(PROJECT)["last_run"]
    assert last["status"] == "failed" and "HTTP 500" in last["error"]
    assert sched.status(PROJECT)["running_job"] is None  # the project is free for the next event
    assert registry(tmp_path).versions(PROJECT) == []


def test_killed_worker_leaves_the_active_version_and_the_job_is_retried(conn, ls, tmp_path):
    # Version 1 is active before the run (an untrained adapter is enough for this).
    store = registry(tmp_path)
    base = resolve_checkpoint("vit_t", "random")
    store.publish(PROJECT, new_adapter_model(base, 64, ["disc", "box"]).to_bytes(), {"note": "before"})
    settings = settings_for(ls, tmp_path, max_steps=5000, min_steps=5000, train_max_seconds=600)
    sched = make_scheduler(conn, settings, retry_intervals=(1,))
    queued = sched.schedule(PROJECT, "ANNOTATION_CREATED", False)
    url = f"unix://{conn.connection_pool.connection_kwargs['path']}"
    worker = subprocess.Popen([sys.executable, "-m", "training.jobs.worker", "--url", url, "--queues", QUEUE,
                               "--worker-class", "simple", "--log-level", "WARNING"],
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    try:
        job = Job.fetch(queued["job_id"], connection=conn)
        wait_for(lambda: (job.get_meta(refresh=True).get("step") or 0) >= 1, timeout=120, interval=0.2)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    assert [v.version for v in store.versions(PROJECT)] == [1] and store.active_version(PROJECT) == 1
    leftovers = [p.name for p in (tmp_path / "adapters" / PROJECT).iterdir() if p.name.startswith(".tmp")]
    assert leftovers == []
    # The training lock dies with its heartbeat; rq's maintenance finds the abandoned job and retries it.
    wait_for(lambda: conn.get(sched.keys(PROJECT).lock) is None, timeout=15)
    StartedJobRegistry(QUEUE, connection=conn).cleanup(timestamp=time.time() + 3600)
    job = Job.fetch(queued["job_id"], connection=conn)
    assert job.get_status() == "scheduled" and job.retries_left == 0


def test_timed_out_job_publishes_nothing_and_frees_the_project(conn, ls, tmp_path):
    store = registry(tmp_path)
    base = resolve_checkpoint("vit_t", "random")
    store.publish(PROJECT, new_adapter_model(base, 64, ["disc", "box"]).to_bytes(), {"note": "before"})
    settings = settings_for(ls, tmp_path, max_steps=5000, min_steps=5000, train_max_seconds=600)
    sched = make_scheduler(conn, settings, job_timeout=6, retry_intervals=())
    queued = sched.schedule(PROJECT, "ANNOTATION_CREATED", False)
    run_queue(conn)
    job = Job.fetch(queued["job_id"], connection=conn)
    assert job.get_status() == "failed" and "JobTimeoutException" in job.latest_result().exc_string
    assert [v.version for v in store.versions(PROJECT)] == [1] and store.active_version(PROJECT) == 1
    status = sched.status(PROJECT)
    assert status["running_job"] is None and status["last_run"]["status"] == "failed"
    assert "JobTimeoutException" in status["last_run"]["error"]


def test_a_full_retrain_asked_through_the_queue_retrains_from_scratch(conn, ls, tmp_path):
    settings = settings_for(ls, tmp_path)
    sched = make_scheduler(conn, settings)
    sched.schedule(PROJECT, "ANNOTATION_CREATED", False)
    run_queue(conn)
    sched.train_now(PROJECT)  # nothing changed since version 1: an ordinary run has nothing to do
    run_queue(conn)
    assert sched.status(PROJECT)["last_run"]["status"] == "up_to_date"
    asked = sched.train_now(PROJECT, full=True)
    assert asked["full"] is True and conn.get(sched.keys(PROJECT).full) == b"1"
    run_queue(conn)
    outcome = Job.fetch(asked["job_id"], connection=conn).return_value()
    assert outcome["plan"]["kind"] == "full" and outcome["version"] == 2
    meta = {v.version: v for v in registry(tmp_path).versions(PROJECT)}[2].metadata
    assert meta["warm_start_from"] is None and "full retrain" in meta["start"]
    assert conn.get(sched.keys(PROJECT).full) is None  # taken by that run


def test_a_burst_during_a_real_run_makes_exactly_one_follow_up_that_trains_on_it(conn, ls, tmp_path):
    """Annotations saved while a run trains: the run finishes as it began, then one follow-up run trains
    incrementally on every one of them (and not a run per annotation)."""
    settings = settings_for(ls, tmp_path, min_steps=30, max_steps=30)
    sched = make_scheduler(conn, settings)
    first = sched.schedule(PROJECT, "ANNOTATION_CREATED", False)
    burst, answers = [1, 3, 4, 6], []

    def annotate_during_training() -> None:
        wait_for(lambda: Job.fetch(first["job_id"], connection=conn).meta.get("stage") == "training", timeout=120)
        for task in burst:
            resubmit(ls, task)
            answers.append(sched.schedule(PROJECT, "ANNOTATION_UPDATED", False))

    annotator = threading.Thread(target=annotate_during_training)
    annotator.start()
    run_queue(conn)  # a burst worker: it stops once the queue is empty
    annotator.join(timeout=10)
    assert [a["status"] for a in answers] == ["queued"] + ["coalesced"] * 3
    versions = {v.version: v.metadata for v in registry(tmp_path).versions(PROJECT)}
    assert sorted(versions) == [1, 2]
    follow_up = versions[2]
    held = set(follow_up["data"]["holdout_ids"])
    assert follow_up["plan"]["kind"] == "incremental"
    assert follow_up["plan"]["new_tasks"] == len([t for t in burst if t not in held]) > 0
    for task in burst:
        annotation = ls._find(task)[1]["annotations"][0]
        if task not in held:  # trained on the annotation saved during the first run
            assert follow_up["data"]["trained"][str(task)].startswith(f"{annotation['id']}@")
