"""docker-compose.yml, its GPU override and backend/Dockerfile: Compose-schema validity and samloop's rules.

No Docker engine is needed: the files are checked against the vendored Compose Specification schema.
"""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
DOCKERFILE = ROOT / "backend" / "Dockerfile"
SCHEMA = Path(__file__).parent / "data" / "compose-spec" / "compose-spec.json"

# The only environment names samloop's own services may use (backend/settings.py reads them).
SAMLOOP_ENV = {
    "LABEL_STUDIO_URL",
    "LABEL_STUDIO_API_KEY",
    "REDIS_URL",
    "SAM_MODEL",
    "SAM_CHECKPOINT",
    "SAM_IMAGE_SIZE",
    "SAMLOOP_DATA_DIR",
    "SAMLOOP_MODEL_CACHE",
    "SAMLOOP_WORKER_NICE",
    "DEVICE",
    "BASIC_AUTH_USER",
    "BASIC_AUTH_PASS",
    "WEBHOOK_SECRET",
    "TRAIN_MIN_ANNOTATIONS",
    "TRAIN_MAX_SECONDS",
}
SAMLOOP_SERVICES = ("backend", "worker")
_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


@cache
def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _interpolate(value: Any) -> Any:
    """Resolve ``${NAME:-default}`` as compose does with an empty environment."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    return value


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def _errors(doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator().iter_errors(doc)]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _interpolate(_load(COMPOSE))


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU], ids=lambda p: p.name)
def test_valid_compose_spec(path: Path) -> None:
    raw = _load(path)
    assert _errors(raw) == []
    assert _errors(_interpolate(raw)) == []


def test_schema_rejects_a_misspelt_key(compose: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["backend"]["healtcheck"] = broken["services"]["backend"].pop("healthcheck")
    assert any("healtcheck" in err for err in _errors(broken))


def test_services_present(compose: dict[str, Any]) -> None:
    assert {"label-studio", "redis", "backend", "worker", "rq-dashboard"} <= set(compose["services"])
    assert compose["services"]["rq-dashboard"]["profiles"] == ["dashboard"]


@pytest.mark.parametrize("name", SAMLOOP_SERVICES)
def test_samloop_env_names_are_known(compose: dict[str, Any], name: str) -> None:
    unknown = set(_env(compose["services"][name])) - SAMLOOP_ENV
    assert not unknown, f"{name} uses environment names outside the documented list: {sorted(unknown)}"


def test_backend_and_worker_share_configuration(compose: dict[str, Any]) -> None:
    backend, worker = (_env(compose["services"][n]) for n in SAMLOOP_SERVICES)
    assert backend["REDIS_URL"] == worker["REDIS_URL"] == "redis://redis:6379/0"
    # The worker shares the backend's host: it trains at a lower CPU priority, the rest is the same.
    assert worker.pop("SAMLOOP_WORKER_NICE") == "10"
    assert backend == worker
    assert backend["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert backend["SAMLOOP_DATA_DIR"] == "/data" and backend["SAMLOOP_MODEL_CACHE"] == "/models"
    assert backend["SAM_MODEL"] == "vit_t" and backend["SAM_IMAGE_SIZE"] == "1024"
    assert backend["DEVICE"] == "auto"
    assert backend["SAM_CHECKPOINT"] == ""


def test_commands(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["backend"]["command"] == ["python", "-m", "backend", "--host", "0.0.0.0", "--port", "9090"]
    assert services["worker"]["command"] == ["python", "-m", "training.jobs.worker"]
    assert "9090:9090" in services["backend"]["ports"]
    assert services["backend"]["build"]["dockerfile"] == "backend/Dockerfile"
    assert services["worker"]["image"] == services["backend"]["image"]


def test_backend_healthcheck_hits_health(compose: dict[str, Any]) -> None:
    test = compose["services"]["backend"]["healthcheck"]["test"]
    command = " ".join(test) if isinstance(test, list) else test
    assert "http://localhost:9090/health" in command


def test_label_studio_allows_private_backends(compose: dict[str, Any]) -> None:
    ls = compose["services"]["label-studio"]
    env = _env(ls)
    assert ls["image"] == "heartexlabs/label-studio:1.23.2"
    assert env["ML_BLOCK_LOCAL_IP"] == "false"
    assert env["SSRF_PROTECTION_ENABLED"] == "false"
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    # LS's user token is the key the backend and worker use to call LS.
    raw = _load(COMPOSE)["services"]
    assert _env(raw["label-studio"])["LABEL_STUDIO_USER_TOKEN"] == _env(raw["backend"])["LABEL_STUDIO_API_KEY"]


def test_redis_persists(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_named_volumes_for_models_and_data(compose: dict[str, Any]) -> None:
    for name in SAMLOOP_SERVICES:
        mounts = dict(v.split(":", 1)[::-1] for v in compose["services"][name]["volumes"])
        assert mounts["/models"] in compose["volumes"] and mounts["/data"] in compose["volumes"]


def test_gpu_override_reserves_gpus() -> None:
    worker = _interpolate(_load(COMPOSE_GPU))["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert set(_env(worker)) <= SAMLOOP_ENV
    assert worker["build"]["args"]["BASE_IMAGE"].startswith("nvidia/cuda:")


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    assert re.search(r"^ARG SAM_MODEL=vit_t$", text, re.M)
    assert 'python -m training.model.weights download --model "${SAM_MODEL}"' in text
    assert "pip install -r requirements.txt" in text
    assert "SAMLOOP_MODEL_CACHE=/models" in text
    assert "install -y --no-install-recommends g++" in text  # torch.compile of the click decoder
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".venv-ls", ".git", "data"} <= set(ignored)
