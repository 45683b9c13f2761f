"""/webhook with every Label Studio action, shaped as LS's webhook serializers send them."""

from __future__ import annotations

import pytest
import redis

from tests.backend.conftest import BRUSH_CONFIG, ls_created_at, ls_id, setup_body
from training.jobs.actions import KNOWN_ACTIONS, TRAINING_ACTIONS

DEAD = "redis://127.0.0.1:1/0"


def ls_project(project: str) -> dict:
    return {"id": ls_id(project), "title": "Birds", "label_config": "<View/>",
            "created_at": ls_created_at(project),
            "min_annotations_to_start_training": 0, "show_collab_predictions": True}


def ls_task(project: str, task_id: int = 5) -> dict:
    return {"id": task_id, "data": {"image": "/data/upload/3/a.png"}, "project": ls_id(project), "is_labeled": True}


def ls_annotation(project: str, annotation_id: int = 9) -> dict:
    return {"id": annotation_id, "result": [], "task": 5, "project": ls_id(project), "completed_by": 1,
            "was_cancelled": False, "ground_truth": False}


def event(action: str, project: str) -> dict:
    """The body Label Studio sends for ``action`` (webhooks/models.py: key, many, project field)."""
    p = ls_project(project)
    bodies = {
        "ANNOTATION_CREATED": {"annotation": ls_annotation(project), "task": ls_task(project), "project": p},
        "ANNOTATION_UPDATED": {"annotation": ls_annotation(project), "task": ls_task(project), "project": p},
        "ANNOTATIONS_CREATED": {"annotation": [ls_annotation(project, 1), ls_annotation(project, 2)],
                                "task": [ls_task(project, 1), ls_task(project, 2)], "project": p},
        "ANNOTATIONS_DELETED": {"annotations": [{"id": 1}, {"id": 2}], "project": p},
        "START_TRAINING": {"project": p},
        "TASKS_CREATED": {"tasks": [ls_task(project)], "project": p},
        "TASKS_DELETED": {"tasks": [{"id": 5}], "project": p},
        "PROJECT_CREATED": {"project": p},
        "PROJECT_UPDATED": {"project": p},
        "PROJECT_DELETED": {"project": {"id": ls_id(project)}},
        "LABEL_LINK_CREATED": {"label_link": [{"id": 1, "project": ls_id(project)}], "project": p},
        "LABEL_LINK_UPDATED": {"label_link": {"id": 1, "project": ls_id(project)}, "project": p},
        "LABEL_LINK_DELETED": {"label_link": {"id": 1}, "project": p},
        "REVIEW_CREATED": {"review": {"id": 1, "annotation": 9}, "project": p},
        "REVIEW_UPDATED": {"review": {"id": 1, "annotation": 9}, "project": p},
        "REVIEWS_DELETED": {"reviews": [{"id": 1}], "project": p},
    }
    return {"action": action, **bodies[action]}


@pytest.mark.parametrize("action", sorted(KNOWN_ACTIONS))
def test_every_label_studio_action_is_acknowledged(backend, project, action):
    # Set up first, as Label Studio does on connect: PROJECT_DELETED names only the bare id.
    assert backend.client.post("/setup", json=setup_body(project, BRUSH_CONFIG)).status_code == 200
    calls_before = len(backend.scheduler.calls)
    response = backend.client.post("/webhook", json=event(action, project))
    assert response.status_code in (200, 201), response.text
    body = response.json()
    assert body["action"] == action and body["project"] == project
    new_calls = backend.scheduler.calls[calls_before:]
    if action in TRAINING_ACTIONS:
        assert response.status_code == 201 and body["status"] == "accepted"
        assert new_calls == [(project, action, action == "START_TRAINING")]
    else:
        assert body["status"] == "ignored" and new_calls == []
    events = backend.client.get(f"/projects/{project}/events").json()["events"]
    assert events[action] == 1 and events["last_event_at"] > 0


def test_auto_training_off_ignores_events_but_not_the_start_training_button(backend, project):
    backend.client.patch(f"/projects/{project}/settings", json={"auto_training": False})
    calls_before = len(backend.scheduler.calls)
    ignored = backend.client.post("/webhook", json=event("ANNOTATION_CREATED", project)).json()
    assert ignored["status"] == "ignored" and ignored["reason"] == "auto-training is off"
    forced = backend.client.post("/webhook", json=event("START_TRAINING", project))
    assert forced.status_code == 201
    assert backend.scheduler.calls[calls_before:] == [(project, "START_TRAINING", True)]


def test_project_can_come_from_the_task_or_as_setup_style_string(backend, project):
    body = event("ANNOTATION_CREATED", project)
    body.pop("project")
    # The task's bare id means the project of that id which Label Studio set up last.
    assert backend.client.post("/webhook", json=body).json()["project"] == str(ls_id(project))
    assert backend.client.post("/setup", json=setup_body(project, BRUSH_CONFIG)).status_code == 200
    assert backend.client.post("/webhook", json=body).json()["project"] == project
    assert backend.client.post("/webhook", json={"action": "START_TRAINING", "project": project}
                               ).json()["project"] == project


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"action": "DELETE_EVERYTHING", "project": {"id": 1}}, "unknown webhook action 'DELETE_EVERYTHING'"),
        ({"action": "annotation_created", "project": {"id": 1}}, "unknown webhook action"),
        ({"action": "ANNOTATION_CREATED"}, "without a project id"),
        ({"action": "START_TRAINING", "project": {"id": "three"}}, "project must be a project id"),
        ({"action": "START_TRAINING", "project": -4}, "must not be negative"),
        ({"project": {"id": 1}}, "action: field required"),
        ({"action": 7, "project": 1}, "action"),
        ({"action": "", "project": 1}, "action"),
    ],
)
def test_bad_webhook_bodies_are_refused_by_name(backend, body, words):
    response = backend.client.post("/webhook", json=body)
    assert response.status_code == 422
    assert words in response.json()["detail"]


def test_redis_down_answers_503(backend, project):
    handler = backend.services.webhook
    alive = handler.client
    handler.client = redis.Redis.from_url(DEAD, socket_connect_timeout=0.2)
    try:
        response = backend.client.post("/webhook", json=event("ANNOTATION_CREATED", project))
    finally:
        handler.client = alive
    assert response.status_code == 503
    assert "Redis unreachable" in response.json()["detail"]


def test_scheduler_queue_down_answers_503(backend, project, monkeypatch):
    def unreachable(project, action, force, labeled_tasks=None):
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(backend.scheduler, "schedule", unreachable)
    response = backend.client.post("/webhook", json=event("START_TRAINING", project))
    assert response.status_code == 503
    assert "cannot queue training" in response.json()["detail"]


def test_labeled_task_count_from_the_project_is_passed_on(backend, project):
    body = event("ANNOTATION_CREATED", project)
    body["project"]["num_tasks_with_annotations"] = 7
    backend.client.post("/webhook", json=body)
    assert backend.scheduler.labeled_tasks[-1] == 7
    backend.client.post("/webhook", json=event("START_TRAINING", project))
    assert backend.scheduler.labeled_tasks[-1] is None
