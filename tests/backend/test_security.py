"""Basic auth, the webhook secret, payload limits, and the bad-input matrix (4xx, never 500)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tests.backend.conftest import BRUSH_CONFIG, brush_task, predict_body, start_backend

AUTH = ("labelstudio", "s3cret pass:word")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, module_redis_prefix):
    app, stop = start_backend(tmp_path_factory.mktemp("guarded"), module_redis_prefix,
                              BASIC_AUTH_USER=AUTH[0], BASIC_AUTH_PASS=AUTH[1], WEBHOOK_SECRET="hook-secret")
    yield app
    stop()


PROTECTED = [
    ("post", "/setup", {"project": "1.1", "schema": BRUSH_CONFIG}),
    ("post", "/predict", {"tasks": [], "project": "1.1", "label_config": BRUSH_CONFIG}),
    ("get", "/versions", None),
    ("get", "/projects/1/settings", None),
    ("patch", "/projects/1/settings", {"split_instances": True}),
    ("post", "/projects/1/activate", {"version": 1}),
    ("get", "/projects/1/events", None),
]


def call(client: TestClient, method: str, path: str, body, **kwargs):
    if body is None:
        return getattr(client, method)(path, **kwargs)
    return client.request(method.upper(), path, json=body, **kwargs)


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_basic_auth_guards_every_endpoint_but_health(guarded, method, path, body):
    client = guarded.client
    for path_open in ("/", "/health"):
        assert client.get(path_open).status_code == 200
    refused = call(client, method, path, body)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Basic")
    assert call(client, method, path, body, auth=("labelstudio", "wrong")).status_code == 401
    allowed = call(client, method, path, body, auth=AUTH)
    assert allowed.status_code != 401  # 404 for activating a missing version is fine


def test_webhook_accepts_secret_header_query_or_basic_auth(guarded):
    client = guarded.client
    body = {"action": "START_TRAINING", "project": {"id": 4}}
    assert client.post("/webhook", json=body).status_code == 401
    assert client.post("/webhook", json=body, headers={"X-Samloop-Webhook-Secret": "nope"}).status_code == 401
    assert client.post("/webhook?secret=nope", json=body).status_code == 401
    assert client.post("/webhook", json=body, headers={"X-Samloop-Webhook-Secret": "hook-secret"}).status_code == 201
    assert client.post("/webhook?secret=hook-secret", json=body).status_code == 201
    calls_before = len(guarded.scheduler.calls)
    assert client.post("/webhook", json=body, auth=AUTH).status_code == 201
    assert len(guarded.scheduler.calls) == calls_before + 1


def test_webhook_secret_alone_leaves_other_endpoints_open(make_backend):
    backend = make_backend(WEBHOOK_SECRET="only-hook")
    body = {"action": "PROJECT_UPDATED", "project": {"id": 4}}
    assert backend.client.post("/webhook", json=body).status_code == 401
    assert backend.client.post("/webhook", json=body, headers={"X-Samloop-Webhook-Secret": "only-hook"}
                               ).status_code == 200
    assert backend.client.get("/versions").status_code == 200


def test_payload_limit_answers_413_with_the_limit(make_backend):
    backend = make_backend(MAX_PAYLOAD_MB=0.01)  # 10 KB
    big = predict_body("1", [brush_task(i, "http://x/" + "a" * 200) for i in range(100)])
    response = backend.client.post("/predict", json=big)
    assert response.status_code == 413
    assert "MAX_PAYLOAD_MB" in response.json()["detail"]

    def chunks():  # no Content-Length: counted while streaming
        data = json.dumps(big).encode()
        for start in range(0, len(data), 1000):
            yield data[start : start + 1000]

    streamed = backend.client.post("/predict", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert backend.client.post("/predict", json=predict_body("1", [])).status_code == 200


def test_unexpected_errors_become_json_500_with_a_message(make_backend, monkeypatch):
    backend = make_backend()

    def broken(request):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(backend.services.predictions, "predict", broken)
    client = TestClient(backend.client.app, raise_server_exceptions=False)
    response = client.post("/predict", json=predict_body("1", []))
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error (RuntimeError): disk on fire"}


GOOD_TASK = {"id": 1, "data": {"image": "http://127.0.0.1:1/a.png"}}
CONTEXT = {"result": [{"type": "keypointlabels", "value": {"x": "left", "y": 2}}]}

BAD_INPUT = [
    # (method, path, raw body or JSON-able, words in detail)
    ("post", "/setup", b"{not json", "malformed JSON"),
    ("post", "/setup", b"", "field required"),
    ("post", "/setup", [], "valid dictionary"),
    ("post", "/setup", {"project": "1.1"}, "schema: field required"),
    ("post", "/setup", {"schema": BRUSH_CONFIG}, "project: field required"),
    ("post", "/setup", {"project": "one", "schema": BRUSH_CONFIG}, "project must be a project id"),
    ("post", "/setup", {"project": [1], "schema": BRUSH_CONFIG}, "project"),
    ("post", "/setup", {"project": 1, "schema": 5}, "schema"),
    ("post", "/setup", {"project": 1, "schema": BRUSH_CONFIG, "extra_params": 5}, "extra_params"),
    ("post", "/setup", {"project": 1, "schema": BRUSH_CONFIG, "extra_params": "[]"}, "JSON object"),
    ("post", "/setup", {"project": 1, "schema": "<View"}, "not valid XML"),
    ("post", "/setup", {"project": "1" * 30, "schema": BRUSH_CONFIG}, "project"),
    ("post", "/predict", b"\xff\xfe", "malformed JSON"),
    ("post", "/predict", "just a string", "should be an object"),
    ("post", "/predict", {}, "tasks: field required"),
    ("post", "/predict", {"tasks": "all"}, "tasks"),
    ("post", "/predict", {"tasks": [1]}, "tasks.0"),
    ("post", "/predict", {"tasks": [{"id": 1}]}, "tasks.0.data: field required"),
    ("post", "/predict", {"tasks": [{"id": "one", "data": {}}]}, "tasks.0.id"),
    ("post", "/predict", {"tasks": [{"data": "x"}]}, "tasks.0.data"),
    ("post", "/predict", {"tasks": [GOOD_TASK], "project": "p-1"}, "project must be a project id"),
    ("post", "/predict", {"tasks": [GOOD_TASK], "params": 5}, "params"),
    ("post", "/predict", {"tasks": [GOOD_TASK], "params": {"context": "x"}}, "params.context"),
    ("post", "/predict", {"tasks": [GOOD_TASK], "label_config": BRUSH_CONFIG, "params": {"context": {"result": 3}}},
     "params.context.result must be a list"),
    ("post", "/predict", {"tasks": [GOOD_TASK], "label_config": BRUSH_CONFIG, "params": {"context": CONTEXT}},
     "value.x"),
    ("post", "/webhook", b"[", "malformed JSON"),
    ("post", "/webhook", {"action": None}, "action"),
    ("post", "/webhook", {"action": "X" * 100}, "action"),
    ("get", "/versions?project=../etc", None, "project must be a project id"),
    ("patch", "/projects/1/settings", [1], "valid dictionary"),
    ("patch", "/projects/1/settings", {"predictions": "sometimes"}, "predictions"),
    ("patch", "/projects/1/settings", {"colour": "red"}, "'colour'"),
    ("patch", "/projects/abc/settings", {"predictions": True}, "project must be a project id"),
    ("post", "/projects/1/activate", {"version": 0}, "version"),
    ("post", "/projects/1/activate", {"version": "latest"}, "version"),
    ("post", "/projects/1/activate", {"version": 1, "force": True}, "force"),
]


@pytest.mark.parametrize(("method", "path", "body", "words"), BAD_INPUT)
def test_bad_input_is_a_4xx_naming_the_problem(backend, method, path, body, words):
    # TestClient raises any exception that reached the 500 handler: a pass means no 500 happened.
    if isinstance(body, bytes):
        response = backend.client.request(method.upper(), path, content=body,
                                          headers={"Content-Type": "application/json"})
    else:
        response = call(backend.client, method, path, body)
    assert 400 <= response.status_code < 500, response.text
    assert words in response.json()["detail"], response.json()["detail"]


def test_non_json_content_type_is_refused(backend):
    response = backend.client.post("/predict", content=b"tasks=1", headers={"Content-Type": "text/plain"})
    assert 400 <= response.status_code < 500
