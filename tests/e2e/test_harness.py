"""The harness itself against a real Label Studio: every ls_api helper, the SSRF flags, PAT auth, screenshots."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.e2e import ls_api as api
from tests.e2e.browser import screenshot_ls_page
from tests.e2e.label_studio import LabelStudioServer
from tests.e2e.stub_backend import StubMLBackend

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.e2e

WIDTH, HEIGHT = 96, 64


def _project_with_images(client: httpx.Client, n: int = 3) -> tuple[int, list[dict]]:
    project = api.create_project(client, api.brush_config(("cat", "dog"), smart=True), title="harness")
    images = [(f"img{i}.png", api.synthetic_image(WIDTH, HEIGHT, seed=i)[0]) for i in range(n)]
    summary = api.import_images(client, project["id"], images)
    assert summary["task_count"] == n
    return project["id"], api.list_tasks(client, project["id"])


def test_backend_round_trip(
    label_studio: LabelStudioServer,
    ls_client: httpx.Client,
    stub_backend: StubMLBackend,
    browser: Browser,
    tmp_path: Path,
) -> None:
    project_id, tasks = _project_with_images(ls_client)
    assert len(tasks) == 3
    assert all(t["data"]["image"].startswith(f"/data/upload/{project_id}/") for t in tasks)

    ml = api.connect_ml_backend(ls_client, project_id, stub_backend.url, extra_params={"mode": "test"})
    assert ml["state"] == "CO", ml
    assert stub_backend.calls_to("/health")
    setup = stub_backend.calls_to("/setup")[-1].body
    assert setup["project"].startswith(f"{project_id}.")
    assert "BrushLabels" in setup["schema"]
    assert setup["extra_params"] == {"mode": "test"}
    assert setup["access_token"] == label_studio.legacy_token
    hooks = api.list_webhooks(ls_client, project_id)
    assert [h["url"] for h in hooks] == [f"{stub_backend.url}/webhook"]
    assert hooks[0]["send_for_all_actions"]

    updated = api.update_ml_extra_params(ls_client, ml["id"], {"mode": "changed"})
    assert updated["extra_params"] == {"mode": "changed"}
    assert stub_backend.calls_to("/setup")[-1].body["extra_params"] == {"mode": "changed"}

    # A webhook reaching a loopback backend proves ML_BLOCK_LOCAL_IP / SSRF_PROTECTION_ENABLED took effect.
    _, mask = api.synthetic_image(WIDTH, HEIGHT, seed=0)
    annotation = api.create_annotation(ls_client, tasks[0]["id"], [api.brush_result(mask, "cat")])
    assert stub_backend.wait_for(lambda s: "ANNOTATION_CREATED" in s.webhook_actions(), timeout=15)
    event = next(c.body for c in stub_backend.calls_to("/webhook") if c.body.get("action") == "ANNOTATION_CREATED")
    assert event["annotation"]["id"] == annotation["id"]
    assert event["task"]["id"] == tasks[0]["id"]

    answer = api.retrieve_predictions(ls_client, project_id)
    assert answer["processed_items"] == 3, answer
    predictions = api.wait_until(lambda: api.list_predictions(ls_client, project_id), timeout=20)
    assert {p["task"] for p in predictions} == {t["id"] for t in tasks}
    assert {p["model_version"] for p in predictions} == {StubMLBackend.MODEL_VERSION}

    stub_backend.predict_fn = lambda body: [
        {"result": [api.brush_result(mask, "dog")], "score": 0.9, "model_version": StubMLBackend.MODEL_VERSION}
        for _ in body["tasks"]
    ]
    context = api.keypoint_context(40.0, 30.0, "dog", width=WIDTH, height=HEIGHT)
    reply = api.interactive_annotating(ls_client, ml["id"], tasks[1]["id"], context)
    assert reply["data"]["result"][0]["value"]["brushlabels"] == ["dog"]
    sent = stub_backend.calls_to("/predict")[-1].body
    assert sent["params"]["context"] == context
    assert [t["id"] for t in sent["tasks"]] == [tasks[1]["id"]]

    api.start_training(ls_client, ml["id"])
    assert stub_backend.wait_for(lambda s: "START_TRAINING" in s.webhook_actions(), timeout=15)

    shot = screenshot_ls_page(
        browser,
        label_studio,
        f"/projects/{project_id}/data?task={tasks[0]['id']}",
        tmp_path / "labeling.png",
        wait_for_selector="canvas",
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000


def test_polygon_annotation(ls_client: httpx.Client) -> None:
    project = api.create_project(ls_client, api.polygon_config(("cat", "dog")), title="polygons")
    api.import_images(ls_client, project["id"], [("p.png", api.synthetic_image(WIDTH, HEIGHT, seed=5)[0])])
    (task,) = api.list_tasks(ls_client, project["id"])
    region = api.polygon_result([(10, 10), (60, 10), (60, 50)], "dog", width=WIDTH, height=HEIGHT)
    api.create_annotation(ls_client, task["id"], [region])
    (annotation,) = api.get_task(ls_client, task["id"])["annotations"]
    assert annotation["result"][0]["value"]["polygonlabels"] == ["dog"]


def test_personal_access_token(label_studio: LabelStudioServer, ls_client: httpx.Client) -> None:
    api.create_project(ls_client, api.brush_config(), title="pat-visible")
    pat_client = label_studio.sdk(use_pat=True)
    titles = [p.title for p in pat_client.projects.list()]
    assert "pat-visible" in titles
    bearer = {"Authorization": f"Bearer {label_studio.access_token()}"}
    assert httpx.get(f"{label_studio.url}/api/projects", headers=bearer).status_code == 200
