"""Encoding ahead of the annotator: on /setup, TASKS_CREATED and untrained batch /predict, the project's
task images are encoded in the background, so the first click on a task runs no encoder.

Label Studio is ``testkit.fake_label_studio`` (a real HTTP server answering the task list and the
uploads as Label Studio 1.23 does); the end-to-end suite repeats this against a real Label Studio.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from prometheus_client import REGISTRY

from backend.preencode import PREENCODE_NICENESS
from testkit.fake_label_studio import FakeLabelStudio
from testkit.waiting import wait_for
from tests.backend.conftest import BRUSH_CONFIG, brush_task, encode, keypoint, noise_image, predict_body
from tests.backend.test_protocol import setup_body

NUMBER = 41


@pytest.fixture
def label_studio():
    with FakeLabelStudio() as ls:
        ls.add_project(NUMBER, "<View/>")
        yield ls


def add_tasks(ls: FakeLabelStudio, count: int, first_seed: int = 0) -> list[tuple[int, str]]:
    tasks = []
    for seed in range(first_seed, first_seed + count):
        url = ls.add_image(NUMBER, f"t{seed}.png", encode(noise_image(60 + seed, 80, seed)))
        tasks.append((ls.add_task(NUMBER, {"image": url}), url))
    return tasks


def connected(make_backend, ls: FakeLabelStudio, **overrides):
    return make_backend(LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=ls.legacy_token, **overrides)


def wait_idle(backend, seconds: float = 60.0) -> dict:
    deadline = time.monotonic() + seconds
    while not backend.services.preencoder.idle():
        assert time.monotonic() < deadline, "encoding ahead did not finish"
        time.sleep(0.05)
    return backend.client.get(f"/projects/{NUMBER}/settings").json()["preencode_progress"]


def click(backend, task_id: int, url: str) -> dict:
    body = predict_body(str(NUMBER), [brush_task(task_id, url, NUMBER)], context={"result": [keypoint(30, 40)]})
    response = backend.client.post("/predict", json=body)
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def test_connecting_encodes_every_task_ahead_and_the_first_click_is_warm(make_backend, label_studio):
    tasks = add_tasks(label_studio, 3)
    backend = connected(make_backend, label_studio)
    models = backend.services.models
    counted = REGISTRY.get_sample_value("samloop_encodings_ahead_total", {"source": "preencoder"}) or 0.0
    assert backend.client.post("/setup", json=setup_body(str(NUMBER))).status_code == 200
    progress = wait_idle(backend)
    assert progress["state"] == "done"
    assert (progress["total"], progress["encoded"], progress["newly_encoded"], progress["failed"]) == (3, 3, 3, 0)
    assert models.encoded_ahead == models.encoded_images == 3
    assert REGISTRY.get_sample_value("samloop_encodings_ahead_total", {"source": "preencoder"}) - counted == 3
    assert label_studio.requests_to("/api/tasks")
    result = click(backend, *tasks[1])
    assert "error" not in result
    assert models.encoded_images == 3  # the click found its embedding: no encoder call


def test_the_switch_off_encodes_nothing_and_switching_it_on_starts(make_backend, label_studio):
    add_tasks(label_studio, 2)
    backend = connected(make_backend, label_studio)
    body = setup_body(str(NUMBER), extra_params={"preencode": False})
    assert backend.client.post("/setup", json=body).status_code == 200
    assert wait_idle(backend)["state"] == "off"
    assert backend.services.models.encoded_images == 0 and not label_studio.requests_to("/api/tasks")
    assert backend.client.patch(f"/projects/{NUMBER}/settings", json={"preencode": True}).status_code == 200
    assert wait_idle(backend)["encoded"] == 2 and backend.services.models.encoded_ahead == 2


def test_at_most_the_cap_of_tasks_in_label_studios_order(make_backend, label_studio):
    add_tasks(label_studio, 4)
    backend = connected(make_backend, label_studio, PREENCODE_MAX_TASKS=2)
    backend.client.post("/setup", json=setup_body(str(NUMBER)))
    progress = wait_idle(backend)
    assert (progress["total"], progress["encoded"]) == (2, 2)
    served = [r.path for r in label_studio.state.log if "t0.png" in r.path or "t1.png" in r.path
              or "t2.png" in r.path or "t3.png" in r.path]
    assert len(served) == 2 and "t0.png" in served[0] and "t1.png" in served[1]


def test_imported_tasks_are_encoded_on_the_tasks_created_webhook(make_backend, label_studio):
    add_tasks(label_studio, 1)
    backend = connected(make_backend, label_studio)
    backend.client.post("/setup", json=setup_body(str(NUMBER)))
    wait_idle(backend)
    add_tasks(label_studio, 2, first_seed=5)
    response = backend.client.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": NUMBER}})
    assert response.status_code < 300
    progress = wait_idle(backend)
    assert (progress["total"], progress["encoded"], progress["newly_encoded"]) == (3, 3, 2)
    assert backend.services.models.encoded_images == 3  # the first task was not encoded twice


def test_a_batch_predict_before_any_adapter_stores_its_images(make_backend, file_server):
    backend = make_backend()
    urls = [file_server.add(f"/b{i}.png", encode(noise_image(70, 90, 30 + i))) for i in range(2)]
    tasks = [brush_task(i + 1, url, NUMBER) for i, url in enumerate(urls)]
    response = backend.client.post("/predict", json=predict_body(str(NUMBER), tasks))
    assert response.status_code == 200 and all(r["result"] == [] for r in response.json()["results"])
    assert wait_idle(backend)["encoded"] == 2
    models = backend.services.models
    assert models.encoded_ahead == 2
    body = predict_body(str(NUMBER), [tasks[0]], context={"result": [keypoint(30, 40)]})
    assert "error" not in backend.client.post("/predict", json=body).json()["results"][0]
    assert models.encoded_images == 2


def test_encoding_ahead_waits_while_a_request_runs(make_backend):
    backend = make_backend()
    models = backend.services.models
    done = threading.Event()
    with models.priority.request():
        thread = threading.Thread(target=lambda: (models.encode_ahead("d" * 64, noise_image(50, 50, 3)), done.set()))
        thread.start()
        time.sleep(1.0)
        assert not done.is_set() and models.priority.pauses >= 1  # held at an encoder block
    thread.join(timeout=60)
    assert done.is_set() and models.encoded_ahead == 1 and models.has_base_embedding("d" * 64)


def test_a_request_for_an_image_being_encoded_ahead_waits_for_it_instead_of_encoding_twice(make_backend, file_server):
    backend = make_backend()
    models = backend.services.models
    url = file_server.add("/shared.png", encode(noise_image(64, 64, 9)))
    fetched = backend.services.predictions.fetch_image(url, 1, str(NUMBER))
    with models.priority.request():  # hold the background encoding at its first block
        thread = threading.Thread(target=models.encode_ahead, args=(fetched.digest, fetched.image))
        thread.start()
        deadline = time.monotonic() + 30
        while not models.priority.pauses:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    body = predict_body(str(NUMBER), [brush_task(1, url, NUMBER)], context={"result": [keypoint(30, 40)]})
    assert "error" not in backend.client.post("/predict", json=body).json()["results"][0]
    thread.join(timeout=60)
    assert models.encoded_images == models.encoded_ahead == 1


def test_batches_waiting_for_the_encoder_are_merged_not_replaced(make_backend, file_server):
    backend = make_backend()
    preencoder, models = backend.services.preencoder, backend.services.models
    urls = [file_server.add(f"/m{i}.png", encode(noise_image(50, 60, 40 + i))) for i in range(3)]
    with models.priority.request():  # the first batch's encoding waits, so the next two queue up
        preencoder.submit(str(NUMBER), [(1, urls[0])], "test")
        deadline = time.monotonic() + 30
        while not models.priority.pauses:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        preencoder.submit(str(NUMBER), [(2, urls[1])], "test")
        preencoder.submit(str(NUMBER), [(3, urls[2])], "test")
    wait_idle(backend)
    assert models.encoded_ahead == 3


def test_the_encoding_thread_runs_below_requests_and_training_jobs(make_backend, label_studio):
    backend = connected(make_backend, label_studio)
    thread = backend.services.preencoder._thread
    wait_for(lambda: thread.native_id is not None and os.getpriority(os.PRIO_PROCESS, thread.native_id) > 0)
    assert os.getpriority(os.PRIO_PROCESS, thread.native_id) == PREENCODE_NICENESS
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == 0  # the requests' threads keep theirs


def test_a_relisting_fetches_only_the_images_it_has_not_encoded(make_backend, label_studio):
    """A re-listing (every PREENCODE_RELIST_SECONDS, an import) of a project whose images are encoded costs no
    download and no decode: 1,000 of them took 10 s of CPU beside a training job."""
    add_tasks(label_studio, 3)
    backend = connected(make_backend, label_studio)
    assert backend.client.post("/setup", json=setup_body(str(NUMBER))).status_code == 200
    assert wait_idle(backend)["newly_encoded"] == 3
    predictions, fetched = backend.services.predictions, []
    real_fetch = predictions.fetch_image
    predictions.fetch_image = lambda url, task, project: fetched.append(url) or real_fetch(url, task, project)
    ((_, new_url),) = add_tasks(label_studio, 1, first_seed=10)
    assert backend.services.preencoder.request(str(NUMBER), "test")
    progress = wait_idle(backend)
    assert (progress["total"], progress["encoded"], progress["newly_encoded"]) == (4, 4, 1)
    assert fetched == [new_url]


def test_closing_waits_for_the_encoding_thread(make_backend, label_studio):
    add_tasks(label_studio, 3)
    backend = connected(make_backend, label_studio)
    preencoder = backend.services.preencoder
    preencoder.request(str(NUMBER), "test")
    preencoder.close()  # returns once the thread is gone: nothing encodes into a store being closed
    assert not preencoder._thread.is_alive()
    assert not preencoder.request(str(NUMBER), "after close")


def test_repeated_setups_list_the_project_once_until_something_changes(make_backend, label_studio):
    """Label Studio sends /setup before every prediction and model listing: those must not each list
    every task of the project again (issue 21: 256 full listings from 214 /setups in ten minutes)."""
    add_tasks(label_studio, 2)
    backend = connected(make_backend, label_studio)

    def listings() -> int:
        wait_idle(backend)
        return len(label_studio.requests_to("/api/tasks"))

    for _ in range(10):
        assert backend.client.post("/setup", json=setup_body(str(NUMBER))).status_code == 200
    assert listings() == 1  # the connect listed it; nine more /setups listed nothing
    changed = setup_body(str(NUMBER), config=BRUSH_CONFIG.replace("</View>", "<Header value=\"x\"/></View>"))
    assert backend.client.post("/setup", json=changed).status_code == 200
    assert listings() == 2  # a changed label config lists again
    switched = setup_body(str(NUMBER), config=changed["schema"], extra_params={"preencode": True})
    assert backend.client.post("/setup", json=switched).status_code == 200
    assert listings() == 3  # so do changed settings
    response = backend.client.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": NUMBER}})
    assert response.status_code < 300 and listings() == 4  # and an import
    backend.services.preencoder.relist_seconds = 0.0
    assert backend.client.post("/setup", json=switched).status_code == 200
    assert listings() == 5  # and a /setup once the last listing is older than PREENCODE_RELIST_SECONDS
