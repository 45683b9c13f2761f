"""The whole loop on a BrushLabels project, against a real Label Studio and the real samloop backend.

One scenario, in order (the tests share the module's project and backend):

1. the backend runs as ``make run`` runs it: embedded Redis and worker, random vit_t at 256 px, with
   basic auth and a webhook secret (LS's webhook carries the secret as a header);
2. a project with three brush classes and a smart KeyPointLabels tool; ten uploaded images; samloop
   connected through LS's API; three tasks annotated through LS's API;
3. LS's own webhook reaches samloop, an rq job trains, a new adapter version becomes active;
4. batch predictions for unlabeled tasks (LS's "Retrieve predictions") carry that version, valid RLE of
   the image's size and the config's labels; an interactive keypoint returns a mask;
5. predictions switched off and on through the ML backend's extra params (LS sends them to /setup);
6. the backend restarts: versions, settings and predictions continue unchanged;
7. with auto-training off, a new annotation trains nothing, the Start Training button does (warm start);
8. a screenshot of LS's labeling UI with samloop's masks (``SAMLOOP_UPDATE_SCREENSHOT=1`` writes
   ``docs/label-studio-samloop.png``).

Random weights predict arbitrary shapes: the checks are about structure (versions, sizes, labels, RLE),
never about quality.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

from tests.e2e import ls_api as api
from tests.e2e.label_studio import REPO_ROOT, LabelStudioServer
from tests.e2e.regions import check_brush_region, predictions_of
from tests.e2e.samloop_backend import E2E_IMAGE_SIZE, TIMINGS, SamloopBackend, timed
from training.data.dataset import Sample
from training.data.synthetic import SYNTHETIC_CLASSES, synthetic_dataset

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.e2e

CLASSES = list(SYNTHETIC_CLASSES)  # disc, square, triangle
HEIGHT, WIDTH = 240, 320
N_TASKS = 10
ANNOTATED = [0, 1, 2]  # task indexes annotated before the first training run
FRESH, OFF, BACK_ON, AFTER_RESTART = [3, 4], [5, 6], [7], [8, 9]  # groups of unlabeled tasks, one per step
WEBHOOK_SECRET = "e2e-webhook-secret-0123"
BASIC_AUTH = ("labelstudio", "e2e-basic-auth-pass")
TRAIN_TIMEOUT_S = 600.0
SCREENSHOT_ENV = "SAMLOOP_UPDATE_SCREENSHOT"
SCREENSHOT = REPO_ROOT / "docs" / "label-studio-samloop.png"


@dataclass
class Scenario:
    ls: LabelStudioServer
    backend: SamloopBackend
    project_id: int
    ml_id: int
    tasks: list[dict[str, Any]]
    samples: list[Sample]
    versions_seen: list[str] = field(default_factory=list)

    def task_ids(self, indexes: list[int]) -> list[int]:
        return [self.tasks[i]["id"] for i in indexes]

    def client(self) -> httpx.Client:
        return self.ls.client(timeout=120)

    def active(self) -> str:
        version = self.backend.active_version(self.project_id)
        assert version, f"project {self.project_id} has no active adapter"
        return version


def _annotation(sample: Sample) -> list[dict[str, Any]]:
    return [
        api.brush_result(sample.masks[c].astype(np.uint8), CLASSES[c])
        for c in range(len(CLASSES))
        if sample.masks[c].any()
    ]


def _largest_class(sample: Sample) -> int:
    return int(np.argmax(sample.masks.sum((1, 2))))


def _click(sample: Sample, class_index: int) -> tuple[float, float]:
    """A point (percent) inside the sample's shape of that class (its pixel nearest the centroid)."""
    ys, xs = np.nonzero(sample.masks[class_index])
    k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return 100.0 * (xs[k] + 0.5) / WIDTH, 100.0 * (ys[k] + 0.5) / HEIGHT


@pytest.fixture(scope="module")
def scenario(label_studio: LabelStudioServer, samloop_factory: Callable[..., SamloopBackend]) -> Iterator[Scenario]:
    backend = samloop_factory(
        WEBHOOK_SECRET=WEBHOOK_SECRET, BASIC_AUTH_USER=BASIC_AUTH[0], BASIC_AUTH_PASS=BASIC_AUTH[1]
    )
    dataset = synthetic_dataset(N_TASKS, (HEIGHT, WIDTH), seed=7, prefix="brush")
    with label_studio.client(timeout=120) as client:
        project = api.create_project(client, api.brush_config(CLASSES, smart=True), title="samloop e2e brush")
        samples = dataset.samples
        tasks = api.import_named_images(client, project["id"], [(s.name, s.image) for s in samples])

        with timed("brush: connect samloop in LS (POST /api/ml: /health + /setup)"):
            ml = api.connect_ml_backend(client, project["id"], backend.url, basic_auth=BASIC_AUTH)
        assert ml["state"] == "CO", ml
        hooks = api.list_webhooks(client, project["id"])
        assert [h["url"] for h in hooks] == [f"{backend.url}/webhook"], hooks
        # The webhook LS made for the backend can't send basic auth: give it the shared secret as a header.
        hook = client.patch(f"/api/webhooks/{hooks[0]['id']}", json={
            "url": hooks[0]["url"], "headers": {"X-Samloop-Webhook-Secret": WEBHOOK_SECRET},
        })
        assert hook.status_code == 200, hook.text
        assert hook.json()["headers"] == {"X-Samloop-Webhook-Secret": WEBHOOK_SECRET}

        for index in ANNOTATED:
            api.create_annotation(client, tasks[index]["id"], _annotation(samples[index]))
    yield Scenario(label_studio, backend, project["id"], ml["id"], tasks, samples)


@pytest.fixture(scope="module")
def trained(scenario: Scenario) -> Scenario:
    """The scenario once the annotations have produced an active adapter and training has gone quiet."""
    started = time.monotonic()
    version = scenario.backend.wait_for_active_version(scenario.project_id, TRAIN_TIMEOUT_S)
    TIMINGS["brush: annotations -> first active adapter version"] = time.monotonic() - started
    scenario.backend.wait_training_idle(scenario.project_id, TRAIN_TIMEOUT_S)
    # A follow-up run (events that arrived during the first one) would have published a later version.
    scenario.versions_seen.append(scenario.active())
    assert scenario.versions_seen[-1].startswith(version.rsplit("-v", 1)[0])
    return scenario


def _check_batch(scenario: Scenario, client: httpx.Client, indexes: list[int], version: str) -> int:
    """Retrieve predictions for the tasks through LS; check them; return how many regions they hold."""
    ids = scenario.task_ids(indexes)
    answer = api.retrieve_predictions(client, scenario.project_id, ids)
    assert answer["processed_items"] == len(ids), answer
    predictions = predictions_of(client, scenario.project_id, ids)
    regions = 0
    for task_id, prediction in predictions.items():
        assert prediction["model_version"] == version, (task_id, prediction["model_version"], version)
        assert 0.0 <= float(prediction["score"]) <= 1.0, prediction["score"]
        for region in prediction["result"]:
            check_brush_region(region, width=WIDTH, height=HEIGHT, labels=CLASSES)
            regions += 1
    return regions


def _interactive(scenario: Scenario, client: httpx.Client, index: int, class_index: int) -> dict[str, Any]:
    x, y = _click(scenario.samples[index], class_index)
    context = api.keypoint_context(x, y, CLASSES[class_index], width=WIDTH, height=HEIGHT)
    reply = api.interactive_annotating(client, scenario.ml_id, scenario.tasks[index]["id"], context)
    assert "errors" not in reply, reply
    return reply["data"]


# ----------------------------------------------------------------------------------------------------------


def test_backend_guards_with_basic_auth_and_webhook_secret(scenario: Scenario) -> None:
    backend = scenario.backend
    health = backend.request("GET", "/health", auth=None)
    assert health.status_code == 200 and health.json()["random_weights"] is True
    assert health.json()["image_size"] == E2E_IMAGE_SIZE
    assert backend.request("POST", "/predict", auth=None, json={"tasks": []}).status_code == 401
    event = {"action": "PROJECT_UPDATED", "project": {"id": 999999}}
    assert backend.request("POST", "/webhook", auth=None, json=event).status_code == 401
    wrong = {"X-Samloop-Webhook-Secret": "not-the-secret"}
    assert backend.request("POST", "/webhook", auth=None, json=event, headers=wrong).status_code == 401
    right = {"X-Samloop-Webhook-Secret": WEBHOOK_SECRET}
    assert backend.request("POST", "/webhook", auth=None, json=event, headers=right).status_code == 200
    assert backend.request("POST", f"/webhook?secret={WEBHOOK_SECRET}", auth=None, json=event).status_code == 200
    assert backend.request("POST", "/webhook", json=event).status_code == 200  # basic auth


def test_connecting_encodes_every_task_ahead_and_the_first_click_runs_no_encoder(scenario: Scenario) -> None:
    backend, project = scenario.backend, scenario.project_id
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while (progress := backend.project_settings(project).get("preencode_progress") or {}).get("state") != "done":
        assert time.monotonic() < deadline and progress.get("state") != "failed", progress
        time.sleep(0.5)
    assert (progress["total"], progress["encoded"], progress["failed"]) == (N_TASKS, N_TASKS, 0), progress
    before = backend.health()["encoded_images"]
    assert before == N_TASKS  # each image once, however often LS asked (connect, batch predictions)
    with scenario.client() as client:
        _interactive(scenario, client, FRESH[0], _largest_class(scenario.samples[FRESH[0]]))
    assert backend.health()["encoded_images"] == before  # answered from the store


def test_label_studio_webhooks_train_a_new_adapter_version(trained: Scenario) -> None:
    backend, project = trained.backend, trained.project_id
    events = backend.events(project)
    # Every annotation reached samloop through LS's own webhook (with the secret header).
    assert events.get("ANNOTATION_CREATED", 0) >= len(ANNOTATED), events

    listing = backend.versions(project)
    active = trained.versions_seen[-1]
    assert re.fullmatch(rf"samloop-vit_t-{E2E_IMAGE_SIZE}-RANDOM-WEIGHTS-p{project}\.\d+-v\d+", active), active
    # LS's webhooks (project.created_at) and its /setup ("<id>.<created>") named the same key: the adapter
    # trained from the webhooks is the one served to the project LS set up.
    key = backend.key(project)
    assert re.fullmatch(rf"{project}\.\d{{10}}", key) and f"-p{key}-v" in active and key in listing["active"]
    assert listing["versions"][0].endswith("-untrained") and active in listing["versions"]
    details = {d["model_version"]: d for d in listing["details"]}
    meta = details[active]
    assert meta["active"] is True
    assert meta["metadata"]["promoted"] is True, meta["metadata"]["decision"]
    assert sorted(meta["metadata"]["class_names"]) == sorted(CLASSES)
    assert sorted(meta["metadata"]["data"]["task_ids"]) == sorted(trained.task_ids(ANNOTATED))
    assert meta["metadata"]["train"]["steps"] >= 1
    TIMINGS[f"brush: training run of {active} (in the job)"] = meta["metadata"]["train"]["seconds"]


def test_batch_predictions_carry_the_new_version(trained: Scenario) -> None:
    version = trained.active()
    with trained.client() as client:
        with timed("brush: LS retrieve predictions for 2 unlabeled tasks"):
            regions = _check_batch(trained, client, FRESH, version)
        # LS asked /setup before the batch and now knows the version too.
        assert api.get_ml_backend(client, trained.ml_id)["model_version"] == version
    if not regions:
        warnings.warn(f"{version} predicted no region on the unlabeled tasks (random weights): only the "
                      "predictions' model_version and score were checked", stacklevel=1)


def test_interactive_keypoint_returns_a_mask(trained: Scenario) -> None:
    version = trained.active()
    masks = []
    with trained.client() as client:
        for class_index in range(len(CLASSES)):
            index = FRESH[0]
            if not trained.samples[index].masks[class_index].any():
                continue
            started = time.monotonic()
            data = _interactive(trained, client, index, class_index)
            TIMINGS[f"brush: interactive click ({CLASSES[class_index]})"] = time.monotonic() - started
            assert data["model_version"] == version
            assert len(data["result"]) <= 1, "one click, one mask"
            for region in data["result"]:
                masks.append(check_brush_region(region, width=WIDTH, height=HEIGHT, labels=CLASSES))
                assert region["value"]["brushlabels"] == [CLASSES[class_index]]  # the label the user chose
    assert any(m.any() for m in masks), "every interactive click returned an empty mask"


def test_predictions_switch_off_and_on_through_extra_params(trained: Scenario) -> None:
    version, project = trained.active(), trained.project_id
    with trained.client() as client:
        api.update_ml_extra_params(client, trained.ml_id, {"predictions": False})
        assert trained.backend.project_settings(project)["settings"]["predictions"] is False
        ids = trained.task_ids(OFF)
        api.retrieve_predictions(client, project, ids)
        for task_id, prediction in predictions_of(client, project, ids).items():
            assert prediction["result"] == [], (task_id, prediction["result"][:1])
            assert prediction["model_version"] == version
        assert _interactive(trained, client, OFF[0], _largest_class(trained.samples[OFF[0]]))["result"] == []

        api.update_ml_extra_params(client, trained.ml_id, {"predictions": True})
        assert trained.backend.project_settings(project)["settings"]["predictions"] is True
        regions = _check_batch(trained, client, BACK_ON, version)
        data = _interactive(trained, client, BACK_ON[0], _largest_class(trained.samples[BACK_ON[0]]))
        regions += len(data["result"])
    assert regions, "predictions switched back on, but neither the batch nor a click returned a region"


def _stored_settings(backend: SamloopBackend, project: int) -> dict[str, Any]:
    """The settings answer without the progress of encoding ahead, which each process keeps for itself."""
    answer = backend.project_settings(project)
    answer.pop("preencode_progress", None)
    return answer


def test_restart_loses_nothing(trained: Scenario) -> None:
    backend, project = trained.backend, trained.project_id
    before = {
        "versions": backend.versions(project),
        "settings": _stored_settings(backend, project),
        "events": backend.events(project),
    }
    with timed("brush: backend restart (stop + start to /health UP)"):
        backend.restart()
    # /predict first, before Label Studio calls /setup again.
    with trained.client() as client:
        data = _interactive(trained, client, AFTER_RESTART[0], _largest_class(trained.samples[AFTER_RESTART[0]]))
        assert data["model_version"] == before["settings"]["model_version"]
        for region in data["result"]:
            check_brush_region(region, width=WIDTH, height=HEIGHT, labels=CLASSES)
        assert backend.versions(project) == before["versions"]
        assert _stored_settings(backend, project) == before["settings"]
        assert backend.events(project) == before["events"]
        _check_batch(trained, client, AFTER_RESTART, trained.versions_seen[-1])
        assert api.get_ml_backend(client, trained.ml_id)["state"] == "CO"


def test_start_training_button_trains_when_auto_training_is_off(trained: Scenario) -> None:
    backend, project = trained.backend, trained.project_id
    first = trained.active()
    with trained.client() as client:
        api.update_ml_extra_params(client, trained.ml_id, {"predictions": True, "auto_training": False})
        assert backend.project_settings(project)["settings"]["auto_training"] is False
        seen = backend.events(project).get("ANNOTATION_CREATED", 0)
        index = FRESH[0]
        api.create_annotation(client, trained.tasks[index]["id"], _annotation(trained.samples[index]))
        api.wait_until(lambda: backend.events(project).get("ANNOTATION_CREATED", 0) > seen, timeout=30)
        assert backend.training_status(project) == {"queued_job": None, "running_job": None}

        started = time.monotonic()
        api.start_training(client, trained.ml_id)
        second = backend.wait_for_active_version(project, TRAIN_TIMEOUT_S, not_in={first})
        TIMINGS["brush: Start Training -> next active version"] = time.monotonic() - started
        backend.wait_training_idle(project, TRAIN_TIMEOUT_S)
    trained.versions_seen.append(second)
    assert backend.events(project).get("START_TRAINING", 0) >= 1
    meta = next(d for d in backend.versions(project)["details"] if d["model_version"] == second)["metadata"]
    assert meta["warm_start_from"] == int(first.rsplit("-v", 1)[1]), meta["start"]
    assert sorted(meta["data"]["task_ids"]) == sorted(trained.task_ids([*ANNOTATED, index]))


def test_screenshot_of_samloop_masks_in_label_studio(trained: Scenario, browser: Browser, tmp_path: Path) -> None:
    version = trained.active()
    unlabeled = [i for i in range(N_TASKS) if i not in ANNOTATED and i != FRESH[0]]
    with trained.client() as client:
        api.retrieve_predictions(client, trained.project_id, trained.task_ids(unlabeled))
        predictions = predictions_of(client, trained.project_id, trained.task_ids(unlabeled))
        assert {p["model_version"] for p in predictions.values()} == {version}
        task_id = max(predictions, key=lambda t: len(predictions[t]["result"]))
        # Show the newest model's predictions as pre-annotations in the editor.
        api.update_project(client, trained.project_id, show_collab_predictions=True, model_version=version)
    target = SCREENSHOT if os.environ.get(SCREENSHOT_ENV) == "1" else tmp_path / SCREENSHOT.name
    from tests.e2e.browser import screenshot_ls_page

    def show_prediction(page: Page) -> None:
        # The editor opens the draft made from the prediction; show samloop's own prediction tab instead.
        tab = page.get_by_text(re.compile(r"samloop-.*-v\d+")).first
        if tab.count():
            tab.click()

    with timed("brush: screenshot of the labeling UI"):
        shot = screenshot_ls_page(
            browser, trained.ls, f"/projects/{trained.project_id}/data?task={task_id}", target,
            wait_for_selector="canvas", settle_ms=4000, before_shot=show_prediction,
        )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000
