"""Issue 16, what a hostile client broke in request handling (items 1, 2, 5, 6): each answer is now a
4xx naming the problem or a per-task error, and nothing stored is replaced by junk."""

from __future__ import annotations

import gc
import json
import logging
import weakref

import pytest
from fastapi.testclient import TestClient

from tests.backend.conftest import BRUSH_CONFIG, brush_task, encode, keypoint, noise_image, predict_body

CLICK_URL = "http://127.0.0.1:1/never-fetched.png"  # bad requests are refused before any download


def click_body(project: str, regions: list[dict], url: str = CLICK_URL) -> dict:
    return predict_body(project, [brush_task(1, url)], context={"result": regions})


def assert_4xx(response, *words: str) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, detail


# ----- item 1: values that answered 500 ------------------------------------------------------------
@pytest.mark.parametrize("x", [2**64, 10**400, -(2**70)], ids=["2^64", "10^400", "-2^70"])
def test_huge_integer_keypoint_is_422(backend, project, x):
    region = keypoint(10, 10)
    region["value"]["x"] = x
    assert_4xx(backend.client.post("/predict", json=click_body(project, [region])), "value.x")


@pytest.mark.parametrize("x", [-50.0, 1e300, 250])
def test_keypoint_far_off_the_image_is_422(backend, project, x):
    region = keypoint(10, 10)
    region["value"]["x"] = x
    assert_4xx(backend.client.post("/predict", json=click_body(project, [region])), "outside the image")


@pytest.mark.parametrize("bad", [-5, 10**4000, "٣", True, "1" * 19],
                         ids=["-5", "4000 digits", "arabic 3", "true", "19 digits"])
def test_task_level_project_is_checked_inside_validation(backend, bad):
    task = brush_task(1, CLICK_URL)
    task["project"] = bad
    body = {"tasks": [task], "label_config": BRUSH_CONFIG}
    assert_4xx(backend.client.post("/predict", json=body), "tasks.0.project")


# ----- item 6: ids, is_positive ----------------------------------------------------------------------
@pytest.mark.parametrize("bad", [10**4000, 10**18, "٣", "３", "٣.1712345678", "3." + "9" * 40],
                         ids=["4000 digits", "10^18", "arabic 3", "fullwidth 3", "arabic 3.ts", "41-digit ts"])
def test_project_ids_are_bounded_and_ascii(backend, redis_client, bad):
    keys_before = set(redis_client.scan_iter(match=f"{backend.settings.SAMLOOP_REDIS_PREFIX}:*"))
    client = backend.client
    assert_4xx(client.post("/setup", json={"project": bad, "schema": BRUSH_CONFIG}), "project")
    assert_4xx(client.post("/predict", json={"tasks": [], "project": bad, "label_config": BRUSH_CONFIG}), "project")
    assert_4xx(client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": bad}}), "project")
    assert set(redis_client.scan_iter(match=f"{backend.settings.SAMLOOP_REDIS_PREFIX}:*")) == keys_before


@pytest.mark.parametrize("flag", ["false", "true", 0, 1, [], {}])
def test_is_positive_must_be_a_boolean(backend, project, flag):
    region = keypoint(10, 10)
    region["is_positive"] = flag
    assert_4xx(backend.client.post("/predict", json=click_body(project, [region])), "is_positive")


# ----- item 2: the keypoint cap ----------------------------------------------------------------------
def test_keypoints_above_the_cap_are_refused_before_the_model(backend, project):
    cap = backend.settings.MAX_PROMPT_POINTS
    encoded_before = backend.services.models.encoded_on_request
    many = [keypoint(i % 100, (i * 7) % 100) for i in range(cap + 1)]
    assert_4xx(backend.client.post("/predict", json=click_body(project, many)), "MAX_PROMPT_POINTS", str(cap))
    # 20,000 points (5 MB) grew the process by 15 GB before the cap: now refused as quickly.
    flood = [keypoint(i % 100, (i * 7) % 100) for i in range(20_000)]
    assert_4xx(backend.client.post("/predict", json=click_body(project, flood)), "MAX_PROMPT_POINTS")
    assert backend.services.models.encoded_on_request == encoded_before


def test_keypoints_at_the_cap_are_answered(make_backend, file_server):
    backend = make_backend(MAX_PROMPT_POINTS=30)
    url = file_server.add("/cap.png", encode(noise_image(64, 80)))
    points = [keypoint(5 + i * 3, 50, positive=i % 2 == 0, width=80, height=64) for i in range(30)]
    response = backend.client.post("/predict", json=click_body("7", points, url))
    assert response.status_code == 200 and "error" not in response.json()["results"][0]


# ----- item 5: label configs in /predict -----------------------------------------------------------
def test_unusable_config_in_predict_does_not_replace_the_stored_one(backend, project, shared_server):
    url = shared_server.add(f"/{project}-cfg.png", encode(noise_image(40, 50)))
    client = backend.client
    assert client.post("/setup", json={"project": project, "schema": BRUSH_CONFIG}).status_code == 200
    (broken,) = client.post("/predict", json=predict_body(project, [brush_task(1, url)], config="<View/>")
                            ).json()["results"]
    assert "no <Image>" in broken["error"] and broken["result"] == []
    assert backend.services.store.label_config(project) == BRUSH_CONFIG
    # A later request without a config still finds the working one (Redis copy included).
    body = predict_body(project, [brush_task(1, url)])
    body.pop("label_config")
    (later,) = client.post("/predict", json=body).json()["results"]
    assert "error" not in later
    stored = backend.services.store.client.get(backend.services.store._key(project, "label_config"))
    assert stored.decode() == BRUSH_CONFIG


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ("<View", "not valid XML"),
        ("just text", "not valid XML"),
        ('<!DOCTYPE v [<!ENTITY a "aaaaaaaaaa">]><View>&a;</View>', "DOCTYPE"),
        ("<View>" + "<Label value='x'/>" * 70_000 + "</View>", "label_config"),  # 1.2 MB
    ],
)
def test_config_that_is_not_xml_or_too_large_is_422_and_not_stored(backend, project, redis_client, config, words):
    assert backend.client.post("/setup", json={"project": project, "schema": BRUSH_CONFIG}).status_code == 200
    memory_before = redis_client.info("memory")["used_memory"]
    for _ in range(3):
        assert_4xx(backend.client.post("/predict", json=predict_body(project, [], config=config)), words)
    assert backend.services.store.label_config(project) == BRUSH_CONFIG
    assert redis_client.info("memory")["used_memory"] - memory_before < 1_000_000  # other tests share the server


def test_empty_config_means_none_sent(backend, project, shared_server):
    url = shared_server.add(f"/{project}-empty.png", encode(noise_image(40, 50)))
    assert backend.client.post("/setup", json={"project": project, "schema": BRUSH_CONFIG}).status_code == 200
    (result,) = backend.client.post("/predict", json=predict_body(project, [brush_task(1, url)], config="  ")
                                    ).json()["results"]
    assert "error" not in result
    assert backend.services.store.label_config(project) == BRUSH_CONFIG


# ----- item 6: 500s logged once and without the failed request's memory ----------------------------
class _Big:
    """Stands in for the tensor a failed allocation left behind."""


def test_a_500_is_logged_once_and_its_locals_are_released(make_backend, monkeypatch, caplog):
    backend = make_backend()
    refs: list[weakref.ref] = []

    def broken(request):
        big = _Big()
        refs.append(weakref.ref(big))
        raise MemoryError("cannot allocate 3.2 GB")

    monkeypatch.setattr(backend.services.predictions, "predict", broken)
    # raise_server_exceptions=True (the default): an exception that left the app would be raised here,
    # as it reached uvicorn, which logged it a second time.
    client = TestClient(backend.client.app)
    gc.disable()  # what frees the locals must be the answer itself, not a collection that may never come
    try:
        with caplog.at_level(logging.ERROR):
            response = client.post("/predict", json=predict_body("1", []))
        released = refs[0]() is None
    finally:
        gc.enable()
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error (MemoryError): cannot allocate 3.2 GB"}
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    assert released


def test_stalled_body_is_not_an_error_for_a_normal_request(backend):
    # The body deadline never applies to a body that arrives: chunked bodies of many reads pass.
    data = json.dumps({"tasks": [], "project": "5", "label_config": BRUSH_CONFIG}).encode()
    response = backend.client.post("/predict", content=(data[i : i + 7] for i in range(0, len(data), 7)),
                                   headers={"Content-Type": "application/json"})
    assert response.status_code == 200


def test_label_configs_in_memory_are_bounded_and_evicted_ones_read_back(redis_client, redis_prefix, monkeypatch):
    import backend.project_settings as project_settings

    monkeypatch.setattr(project_settings, "CONFIG_MEMORY_CHARS", 20_000)
    store = project_settings.ProjectSettingsStore(redis_client, redis_prefix)
    configs = {str(p): BRUSH_CONFIG.replace("cat", f"cat{p}") for p in range(60)}  # 60 x ~0.8 KB
    for project, config in configs.items():
        store.remember_project(project, config)
    assert sum(len(c) for c in store._configs.values()) <= 20_000
    assert all(store.label_config(p) == c for p, c in configs.items())  # the evicted ones from Redis
