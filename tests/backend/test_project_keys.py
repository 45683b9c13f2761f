"""Projects keyed by Label Studio's ``"<id>.<created timestamp>"``: two instances with the same id keep
their own adapters, a bare id means the project set up last, and what was stored under a bare id moves
to the first key set up for it unless it is older than that project."""

from __future__ import annotations

import time

from tests.backend.conftest import (
    LS_CREATED,
    brush_task,
    encode,
    ls_id,
    noise_image,
    predict_body,
    setup_body,
)
from training.jobs.keys import ProjectKeys

UNTRAINED = "samloop-vit_t-256-RANDOM-WEIGHTS-untrained"


def setup(backend, key: str) -> str:
    response = backend.client.post("/setup", json=setup_body(key))
    assert response.status_code == 200, response.text
    return response.json()["model_version"]


def predict(backend, key: str, url: str) -> dict:
    response = backend.client.post("/predict", json=predict_body(key, [brush_task(1, url, ls_id(key))]))
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def test_a_fresh_label_studio_with_the_same_project_id_is_not_served_the_old_adapter(backend, project,
                                                                                     shared_server):
    url = shared_server.add(f"/{project}-keys.png", encode(noise_image(64, 64, 21)))
    setup(backend, project)
    backend.publish(project, ["cat", "dog"], seed=3)
    assert predict(backend, project, url)["model_version"].endswith(f"-p{project}-v1")
    # A fresh instance restarted its ids at 1: its project with the same id was created a day later.
    fresh = f"{ls_id(project)}.{LS_CREATED + 86_400}"
    assert setup(backend, fresh) == UNTRAINED
    fresh_answer = predict(backend, fresh, url)
    assert fresh_answer["model_version"] == UNTRAINED and fresh_answer["result"] == []
    old_answer = predict(backend, project, url)
    assert old_answer["model_version"].endswith(f"-p{project}-v1") and old_answer["result"]
    # A bare id means the project Label Studio set up last.
    assert backend.client.get(f"/projects/{ls_id(project)}/settings").json()["project"] == fresh
    assert backend.client.get("/versions", params={"project": ls_id(project)}).json()["active"] == {}
    listed = backend.client.get("/versions", params={"project": project}).json()
    assert listed["active"] == {project: old_answer["model_version"]}


def test_what_a_bare_id_stored_moves_to_the_first_key_set_up(backend, project):
    bare = str(ls_id(project))
    for seed in range(2):
        backend.publish(bare, ["cat"], seed=seed)
    backend.registry.activate(bare, 1)
    assert backend.client.patch(f"/projects/{bare}/settings", json={"auto_training": False}).status_code == 200
    # The project was created (2024) before these adapters were trained: they are its own.
    assert setup(backend, project).endswith(f"-p{project}-v1")
    assert backend.registry.versions(bare) == []
    assert [v.version for v in backend.registry.versions(project)] == [1, 2]
    assert backend.registry.active_version(project) == 1
    answer = backend.client.get(f"/projects/{project}/settings").json()
    assert answer["settings"]["auto_training"] is False
    listed = backend.client.get("/versions").json()
    assert bare not in listed["active"] and listed["active"][project].endswith(f"-p{project}-v1")


def test_a_bare_ids_adapters_older_than_the_project_stay_apart(backend, project):
    bare = str(ls_id(project))
    backend.publish(bare, ["cat"], seed=1)
    assert backend.client.patch(f"/projects/{bare}/settings", json={"predictions": False}).status_code == 200
    # Created an hour from now: an adapter trained before the project existed belongs to another instance.
    newer = f"{bare}.{int(time.time()) + 3600}"
    assert setup(backend, newer) == UNTRAINED
    assert [v.version for v in backend.registry.versions(bare)] == [1]
    assert backend.registry.versions(newer) == []
    assert backend.client.get(f"/projects/{newer}/settings").json()["settings"]["predictions"] is True
    # Still listed under its bare id, for an admin to move or delete.
    assert backend.client.get("/versions").json()["active"][bare].endswith(f"-p{bare}-v1")


def test_predictions_for_made_up_projects_write_nothing(backend, shared_server):
    url = shared_server.add("/made-up.png", encode(noise_image(48, 48, 5)))
    redis_client, prefix = backend.services.redis.client, backend.settings.SAMLOOP_REDIS_PREFIX
    before = set(redis_client.scan_iter(match=f"{prefix}:*"))
    made_up = [f"{900_000 + n}.{LS_CREATED}" for n in range(30)]
    for key in made_up:
        assert predict(backend, key, url)["model_version"] == UNTRAINED
    assert set(redis_client.scan_iter(match=f"{prefix}:*")) == before
    assert not set(made_up) & set(backend.services.store.projects())


def test_adoption_waits_for_a_run_under_the_bare_id(backend, project):
    bare = str(ls_id(project))
    backend.publish(bare, ["cat"], seed=4)
    lock = ProjectKeys(backend.settings.SAMLOOP_REDIS_PREFIX, bare).lock
    redis_client = backend.services.redis.client
    redis_client.set(lock, "a-running-job")  # a run that would publish under the bare id after a move
    try:
        assert setup(backend, project) == UNTRAINED
        assert [v.version for v in backend.registry.versions(bare)] == [1]
    finally:
        redis_client.delete(lock)
    assert setup(backend, project).endswith(f"-p{project}-v1")  # the next /setup adopts
    assert backend.registry.versions(bare) == []


def test_a_tasks_project_may_be_written_as_a_key(backend, project, shared_server):
    url = shared_server.add(f"/{project}-task-key.png", encode(noise_image(40, 40, 6)))
    setup(backend, project)
    backend.publish(project, ["cat"], seed=6)
    body = predict_body(project, [brush_task(1, url, project)])  # "project": "<id>.<created>" in the task
    body.pop("project")
    response = backend.client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["model_version"].endswith(f"-p{project}-v1")
