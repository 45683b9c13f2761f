"""Schemathesis over the app's OpenAPI spec against a real uvicorn server: no generated request gets a 5xx.

Bounded: FUZZ_EXAMPLES cases per operation (default 40; the README's figures used more). The served
app keeps the default image-host allow-list, so generated URLs are refused before any connection.
After the run the server is healthy and a project set up before it is served as before.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from backend.app import create_app
from backend.webhook import RecordingScheduler
from tests.backend.conftest import BRUSH_CONFIG, make_settings, serve_app
from training.registry import LocalRegistry

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
BYSTANDER = "77"  # a project set up before the fuzzing: it must come out unchanged
CASES: Counter[str] = Counter()  # generated requests per operation, for the figures


def fuzz_settings(data_dir: Path, prefix: str):
    return make_settings(data_dir, prefix, IMAGE_HOSTS="", IMAGE_DOWNLOAD_TIMEOUT=2.0)


# The spec only: building the app does not load the model (that happens in its lifespan).
SCHEMA = schemathesis.openapi.from_dict(create_app(fuzz_settings(Path("unused"), "unused")).openapi())


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory, module_redis_prefix) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    app = create_app(fuzz_settings(data_dir, module_redis_prefix), registry=LocalRegistry(data_dir / "adapters"),
                     scheduler=RecordingScheduler())
    url, server, thread = serve_app(app, log_level="critical")
    setup = httpx.post(f"{url}/setup", json={"project": f"{BYSTANDER}.1712345678", "schema": BRUSH_CONFIG,
                                             "extra_params": {"split_instances": True}}, timeout=30)
    assert setup.status_code == 200
    yield url
    server.should_exit = True
    thread.join(30)


@SCHEMA.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_5xx(case, fuzz_server):
    response = case.call(base_url=fuzz_server, timeout=30)
    CASES[f"{case.method} {case.path}"] += 1
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:500])


def test_after_the_fuzzing_the_server_is_healthy_and_the_bystander_unchanged(fuzz_server):
    health = httpx.get(f"{fuzz_server}/health", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "UP"
    answer = httpx.get(f"{fuzz_server}/projects/{BYSTANDER}/settings", timeout=5).json()
    assert answer["settings"]["split_instances"] is True
    body = {"tasks": [{"id": 1, "data": {"image": "http://127.0.0.1:1/a.png"}}], "project": BYSTANDER}
    (result,) = httpx.post(f"{fuzz_server}/predict", json=body, timeout=30).json()["results"]
    # Its stored config is still the one /setup gave (a replaced or lost one would be a per-task error).
    assert "error" not in result and result["model_version"].endswith("-untrained")
    assert sum(CASES.values()) >= len(CASES) > 5, CASES
    print(f"schemathesis: {sum(CASES.values())} cases over {len(CASES)} operations: {dict(CASES)}")
