"""Admin API round trips on a live backend, the shared Redis and a real rq fork worker (stand-in job)."""

from __future__ import annotations

import httpx
import pytest
from rq.job import Job

from backend.admin.overview import control_of
from backend.app import create_app
from backend.errors import STATUS_OF, Conflict, ProjectNotFound, Unavailable
from backend.project_keys import TargetTaken
from backend.project_settings import ProjectSettingsStore
from backend.webhook import RecordingScheduler
from tests.backend.admin.conftest import TOKEN, LiveBackend, serve, wait_for
from tests.backend.conftest import (
    brush_task,
    encode,
    ls_id,
    make_settings,
    noise_image,
    predict_body,
    publish_adapter,
)
from training.registry import LocalRegistry


def publish(live: LiveBackend, project: str, count: int = 1) -> list[int]:
    weights = live.services.models.weights
    return [publish_adapter(live.registry, weights, project, ["cat", "dog"], seed=i) for i in range(count)]


def summary(live: LiveBackend, project: str) -> dict:
    with live.client() as client:
        answer = client.get(f"/admin/api/projects/{project}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_projects_listing_carries_what_is_served_and_the_switches(live, project):
    publish(live, project, 2)
    with live.client() as client:
        answer = client.get("/admin/api/projects").json()
    mine = next(p for p in answer["projects"] if p["id"] == project)
    assert mine["model_version"].endswith(f"-p{project}-v2")
    assert mine["active_version"] == 2 and mine["pinned_version"] is None
    assert [v["version"] for v in mine["versions"]] == [1, 2]
    assert set(mine["switches"]) == set(answer["switches"])  # every switch, described generically
    assert answer["switches"]["predictions"]["type"] == "boolean"
    assert mine["job"] is None and mine["training_connected"] is True


def test_switch_predictions_off_is_seen_by_every_process_and_by_predict(live, project, file_server):
    publish(live, project)
    url = file_server.add(f"/{project}.png", encode(noise_image(60, 60, 3)))
    body = predict_body(project, [brush_task(1, url)])
    with live.client() as client:
        assert client.post("/predict", json=body).json()["results"][0]["result"], "an adapter predicts regions"
        changed = client.patch(f"/admin/api/projects/{project}", json={"predictions": False})
        assert changed.status_code == 200, changed.text
        assert changed.json()["switches"]["predictions"] is False
        assert client.post("/predict", json=body).json()["results"][0]["result"] == []
        # The Label Studio-facing settings endpoint is an alias over the same store.
        assert client.get(f"/projects/{project}/settings").json()["settings"]["predictions"] is False
    # Another backend process: a fresh store on the same Redis, nothing cached.
    other = ProjectSettingsStore(live.services.redis.client, live.services.settings.SAMLOOP_REDIS_PREFIX)
    assert other.get(project).predictions is False
    assert summary(live, project)["switches"]["predictions"] is False
    with live.client() as client:
        assert client.patch(f"/admin/api/projects/{project}", json={"predictions": True}).status_code == 200
        assert client.post("/predict", json=body).json()["results"][0]["result"]


@pytest.mark.parametrize(("change", "status", "words"), [
    ({"colour": "red"}, 422, "'colour'"),
    ({"predictions": "maybe"}, 422, "predictions"),
    ({"adapter": "both"}, 422, "adapter"),
    ({"pinned_version": 99}, 422, "pinned_version 99 does not exist"),
])
def test_bad_switches_are_named(live, project, change, status, words):
    publish(live, project)
    with live.client() as client:
        answer = client.patch(f"/admin/api/projects/{project}", json=change)
    assert answer.status_code == status and words in answer.json()["detail"]


def test_activate_an_older_version_and_back(live, project):
    publish(live, project, 2)
    with live.client() as client:
        back = client.post(f"/admin/api/projects/{project}/activate", json={"version": 1})
        assert back.status_code == 200, back.text
        assert back.json()["model_version"].endswith(f"-p{project}-v1") and back.json()["active_version"] == 1
        assert client.get("/versions", params={"project": project}).json()["active"][project].endswith("-v1")
        forward = client.post(f"/admin/api/projects/{project}/activate", json={"version": 2}).json()
        assert forward["model_version"].endswith(f"-p{project}-v2")
        missing = client.post(f"/admin/api/projects/{project}/activate", json={"version": 7})
        assert missing.status_code == 404 and "available versions: [1, 2]" in missing.json()["detail"]
    assert live.registry.active_version(project) == 2


def test_delete_a_version_but_not_the_active_or_pinned_one(live, project):
    publish(live, project, 3)
    with live.client() as client:
        base = f"/admin/api/projects/{project}"
        assert client.patch(base, json={"pinned_version": 2}).json()["model_version"].endswith("-v2")
        active = client.delete(f"{base}/versions/3")
        assert active.status_code == 409 and "active" in active.json()["detail"]
        pinned = client.delete(f"{base}/versions/2")
        assert pinned.status_code == 409 and "pinned" in pinned.json()["detail"]
        gone = client.delete(f"{base}/versions/1")
        assert gone.status_code == 200 and [v["version"] for v in gone.json()["versions"]] == [2, 3]
        assert client.delete(f"{base}/versions/1").status_code == 404
        client.patch(base, json={"pinned_version": None})
    assert [v.version for v in live.registry.versions(project)] == [2, 3]


def test_train_now_runs_a_job_even_with_auto_training_off(live, worker, project):
    publish(live, project)
    with live.client() as client:
        client.patch(f"/admin/api/projects/{project}", json={"auto_training": False})
        queued = client.post(f"/admin/api/projects/{project}/train").json()
    assert queued["training"]["status"] == "queued"
    done = wait_for(lambda: (s := summary(live, project))["job"] is None and s["last_run"] and s)
    assert done["last_run"]["status"] == "promoted" and done["last_run"]["version"] == 2
    assert done["active_version"] == 2 and done["model_version"].endswith(f"-p{project}-v2")
    assert done["last_run"]["candidate"]["mean_iou"] == pytest.approx(0.4)
    assert [step for step, _ in done["last_run"]["losses"]] == [1, 2, 3, 4, 5]  # the run's loss curve
    assert done["versions"][-1]["noc90"] == 3.5


def test_cancel_a_running_job_keeps_the_active_version(live, worker, project):
    publish(live, project)
    live.job_overrides[project] = {"steps": 400, "step_seconds": 0.1}
    with live.client() as client:
        job_id = client.post(f"/admin/api/projects/{project}/train").json()["training"]["job_id"]
        running = wait_for(lambda: ((j := summary(live, project)["job"]) and (j.get("step") or 0) >= 3 and j))
        assert running["stage"] == "training" and running["job_id"] == job_id and running["max_steps"] == 400
        later = wait_for(lambda: ((j := summary(live, project)["job"]) and j["step"] > running["step"] and j))
        assert later["loss"] < running["loss"]  # progress moves while the job runs
        cancelled = client.post(f"/admin/api/projects/{project}/cancel").json()
    assert cancelled["training"]["stopped"] == [job_id]
    job = Job.fetch(job_id, connection=live.services.redis.client)
    wait_for(lambda: job.get_status(refresh=True).value == "stopped")
    after = wait_for(lambda: (s := summary(live, project))["last_run"] and s["last_run"]["status"] == "cancelled" and s)
    assert after["job"] is None and after["active_version"] == 1
    assert [v.version for v in live.registry.versions(project)] == [1]
    assert after["model_version"].endswith(f"-p{project}-v1")
    # The lock was freed at once (not after its TTL): the next run trains instead of deferring.
    live.job_overrides[project] = {"steps": 2}
    with live.client() as client:
        client.post(f"/admin/api/projects/{project}/train")
    trained = wait_for(lambda: (s := summary(live, project))["last_run"]["status"] == "promoted" and s, timeout=30)
    assert trained["active_version"] == 2


def test_cancel_a_queued_job_and_nothing(live, worker, project):
    busy, waiting = project, str(ls_id(project) + 500)
    live.job_overrides[busy] = {"steps": 400, "step_seconds": 0.1}
    with live.client() as client:
        client.patch(f"/admin/api/projects/{waiting}", json={"auto_training": True})  # makes it known
        assert client.post(f"/admin/api/projects/{waiting}/cancel").json()["training"]["status"] == \
            "nothing_to_cancel"
        client.post(f"/admin/api/projects/{busy}/train")
        wait_for(lambda: (summary(live, busy)["job"] or {}).get("stage") == "training")
        queued = client.post(f"/admin/api/projects/{waiting}/train").json()["training"]["job_id"]
        answer = client.post(f"/admin/api/projects/{waiting}/cancel").json()
        assert answer["training"]["cancelled"] == [queued]
        assert Job.fetch(queued, connection=live.services.redis.client).get_status().value == "canceled"
        assert summary(live, waiting)["job"] is None
        client.post(f"/admin/api/projects/{busy}/cancel")
    wait_for(lambda: summary(live, busy)["job"] is None)


def test_unknown_project_and_bad_ids(live):
    with live.client() as client:
        assert client.get("/admin/api/projects/987654").status_code == 404
        bad = client.get("/admin/api/projects/not-a-project")
        assert bad.status_code == 422 and "not-a-project" in bad.json()["detail"]


def test_preencode_progress_is_what_the_settings_answer_reports(live, project):
    publish(live, project)
    with live.client() as client:
        settings = client.get(f"/projects/{project}/settings").json()
    assert summary(live, project)["preencode_progress"] == settings.get("preencode_progress")


def test_move_what_a_bare_id_holds_to_a_key(live, project):
    bare = str(ls_id(project))
    publish(live, bare, 2)
    with live.client() as client:
        moved = client.post(f"/admin/api/projects/{bare}/move", json={"to": project})
        assert moved.status_code == 200, moved.text
        assert moved.json()["moved"] == f"moved project {bare}'s 2 adapter version(s) to {project}"
        assert [v["version"] for v in moved.json()["project"]["versions"]] == [1, 2]
        assert moved.json()["project"]["model_version"].endswith(f"-p{project}-v2")
        again = client.post(f"/admin/api/projects/{bare}/move", json={"to": project})
        assert again.status_code == 404 and f"nothing was stored under project {bare}" in again.json()["detail"]
        publish(live, bare, 1)
        taken = client.post(f"/admin/api/projects/{bare}/move", json={"to": project})
        assert taken.status_code == 409 and "already has versions [1, 2]" in taken.json()["detail"]
        assert [v.version for v in live.registry.versions(bare)] == [1]
        onto_itself = client.post(f"/admin/api/projects/{project}/move", json={"to": project})
        assert onto_itself.status_code == 422 and "onto itself" in onto_itself.json()["detail"]
        malformed = client.post(f"/admin/api/projects/{bare}/move", json={"to": "3:1"})
        assert malformed.status_code == 422 and "'3:1'" in malformed.json()["detail"]


def test_a_full_retrain_is_asked_for_and_a_bad_body_is_named(live, project):
    publish(live, project)
    with live.client() as client:
        bad = client.post(f"/admin/api/projects/{project}/train", json={"full": "very"})
        assert bad.status_code == 422 and "full" in bad.text
        asked = client.post(f"/admin/api/projects/{project}/train", json={"full": True})
    assert asked.status_code == 200 and asked.json()["training"]["full"] is True
    # The request waits in Redis for the run that takes it (rq jobs coalesce; the flag does not get lost).
    keys = control_of(live.services).keys(project)
    assert live.services.redis.client.get(keys.full) == b"1"


def test_admin_errors_go_through_the_backends_error_map(live, project, caplog):
    """The console's errors are the backend's domain errors (``backend.errors.STATUS_OF``): the same
    ``{"detail": ...}`` body, the same status, the same log line as the protocol's routes."""
    publish(live, project, 2)
    caplog.set_level("INFO", logger="backend.errors")
    with live.client() as client:
        unknown = client.get("/admin/api/projects/987654")
        active = client.delete(f"/admin/api/projects/{project}/versions/2")
        missing = client.post(f"/admin/api/projects/{project}/activate", json={"version": 9})
    assert unknown.status_code == 404 and set(unknown.json()) == {"detail"}
    assert unknown.json()["detail"].startswith("project 987654 is unknown here")
    assert active.status_code == 409 and set(active.json()) == {"detail"} and "is active" in active.json()["detail"]
    assert missing.status_code == 404 and set(missing.json()) == {"detail"}
    logged = [record.getMessage() for record in caplog.records if record.name == "backend.errors"]
    assert any(line.startswith("GET /admin/api/projects/987654: 404 project 987654 is unknown") for line in logged)
    assert any(f"DELETE /admin/api/projects/{project}/versions/2: 409" in line for line in logged), logged


def test_every_admin_error_has_a_status_in_the_map():
    for kind, status in ((ProjectNotFound, 404), (Conflict, 409), (TargetTaken, 409), (Unavailable, 503)):
        assert next(STATUS_OF[k] for k in kind.__mro__ if k in STATUS_OF) == status


def test_train_without_a_training_queue_is_a_503_from_the_error_map(tmp_path, redis_prefix):
    app = create_app(make_settings(tmp_path, redis_prefix, ADMIN_TOKEN=TOKEN),
                     registry=LocalRegistry(tmp_path / "adapters"), scheduler=RecordingScheduler())
    url, stop = serve(app)
    try:
        answer = httpx.post(f"{url}/admin/api/projects/3/train", headers={"Authorization": f"Bearer {TOKEN}"},
                            timeout=30)
    finally:
        stop()
    assert answer.status_code == 503, answer.text
    assert answer.json() == {"detail": "no training queue is connected to this backend (it runs with a stand-in "
                                       "scheduler): train and cancel are unavailable"}
