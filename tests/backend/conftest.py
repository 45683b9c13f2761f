"""Shared fixtures for backend tests: a real Redis namespace, local HTTP servers, images, configs, apps.

Every app runs vit_t with random weights at 256 px (SAM_CHECKPOINT=random).
"""

from __future__ import annotations

import io
import itertools
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import redis
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from backend.app import create_app
from backend.settings import Settings
from backend.webhook import RecordingScheduler
from training.labelstudio.projects import created_of, project_number
from training.model.loading import new_adapter_model
from training.registry import LocalRegistry

REDIS_URL = "redis://127.0.0.1:6379/0"
IMAGE_SIZE = 256

BRUSH_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="cat" background="red"/>
    <Label value="dog" background="blue"/>
    <Label value="tree" background="green"/>
  </BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true">
    <Label value="cat" smart="true"/>
    <Label value="dog" smart="true"/>
  </KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true">
    <Label value="dog" smart="true"/>
    <Label value="horse" smart="true"/>
  </RectangleLabels>
</View>"""

POLYGON_CONFIG = """<View>
  <Image name="img" value="$picture"/>
  <PolygonLabels name="poly" toName="img">
    <Label value="cat"/>
    <Label value="dog"/>
  </PolygonLabels>
  <KeyPointLabels name="kp" toName="img" smart="true"><Label value="cat"/></KeyPointLabels>
</View>"""

CHOICES_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="choice" toName="image"><Choice value="a"/></Choices>
</View>"""


def redis_available() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    if not redis_available():
        pytest.fail(f"these tests need a Redis server at {REDIS_URL}")
    return redis.Redis.from_url(REDIS_URL)


def _delete_prefix(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=500))
    if keys:
        client.delete(*keys)


@pytest.fixture
def redis_prefix(redis_client: redis.Redis) -> Iterator[str]:
    """A fresh key namespace on the real Redis, deleted afterwards."""
    prefix = f"test-backend-{uuid.uuid4().hex[:12]}"
    yield prefix
    _delete_prefix(redis_client, prefix)


_project_ids = itertools.count(1000)
# The creation time of every test project (2024-04-05T19:34:38Z).
LS_CREATED = 1712345678


@pytest.fixture
def project() -> str:
    """A project key no other test in this run uses (apps are shared within a module), as Label
    Studio names it to a backend: ``"<id>.<created timestamp>"``."""
    return f"{next(_project_ids)}.{LS_CREATED}"


def ls_id(project: str) -> int:
    """The project's id in its Label Studio (what tasks and annotations carry)."""
    return project_number(project)


# ----- images ---------------------------------------------------------------------------------------
def noise_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def encode(array: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


# ----- a local HTTP server standing in for Label Studio and for foreign image hosts -------------------
@dataclass
class Recorded:
    path: str
    headers: dict[str, str]


@dataclass
class FileServer:
    """Serves ``routes[path] = (status, content_type, body)``; ``redirects[path] = url``; records requests.

    ``required_auth`` (an Authorization header value) makes every route answer 401 without it,
    except ``/api/token/refresh/`` which ``refresh`` handles (refresh token -> access token).
    """

    host: str = "127.0.0.1"
    routes: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)
    redirects: dict[str, str] = field(default_factory=dict)
    required_auth: str | None = None
    refresh: Callable[[str], str | None] | None = None
    requests: list[Recorded] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server.server_address[1]}"

    def add(self, path: str, body: bytes, content_type: str = "image/png", status: int = 200) -> str:
        self.routes[path] = (status, content_type, body)
        return self.url + path

    def start(self) -> FileServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                owner.requests.append(Recorded(self.path, dict(self.headers)))
                if self.path in owner.redirects:
                    self.send_response(302)
                    self.send_header("Location", owner.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if owner.required_auth and self.headers.get("Authorization") != owner.required_auth:
                    self._answer(401, "application/json", b'{"detail": "not authenticated"}')
                    return
                status, content_type, body = owner.routes.get(self.path, (404, "text/plain", b"not found"))
                self._answer(status, content_type, body)

            def do_POST(self) -> None:  # noqa: N802
                import json

                length = int(self.headers.get("Content-Length") or 0)
                payload = self.rfile.read(length)
                owner.requests.append(Recorded(self.path, dict(self.headers)))
                if self.path == "/api/token/refresh/" and owner.refresh is not None:
                    access = owner.refresh(json.loads(payload).get("refresh", ""))
                    if access is None:
                        self._answer(401, "application/json", b'{"detail": "Token is invalid"}')
                    else:
                        self._answer(200, "application/json", json.dumps({"access": access}).encode())
                    return
                self._answer(404, "text/plain", b"not found")

        self.server = ThreadingHTTPServer((self.host, 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    server = FileServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_server() -> Iterator[FileServer]:
    server = FileServer().start()
    yield server
    server.stop()


# ----- apps ---------------------------------------------------------------------------------------------
def make_settings(data_dir: Path, prefix: str, **overrides) -> Settings:
    values = {
        "SAM_MODEL": "vit_t",
        "SAM_CHECKPOINT": "random",
        "SAM_IMAGE_SIZE": IMAGE_SIZE,
        "SAMLOOP_DATA_DIR": data_dir,
        "REDIS_URL": REDIS_URL,
        "SAMLOOP_REDIS_PREFIX": prefix,
        "SAMLOOP_ADAPTER_STORE": "local",
        "LABEL_STUDIO_URL": "",
        "LABEL_STUDIO_API_KEY": "",
        "PRECISION": "fp32",
        # Compiling the decoder costs a background minute of CPU per app; tests/backend/test_compiled_clicks
        # turns it on.
        "COMPILE_DECODER": False,
        # Test servers listen on loopback; the allow-list itself is tested in test_hostile_images.
        "IMAGE_HOSTS": "*",
        **overrides,
    }
    return Settings(**values)


@dataclass
class Backend:
    client: TestClient
    settings: Settings
    registry: LocalRegistry
    scheduler: RecordingScheduler

    @property
    def services(self):
        return self.client.app.state.services

    def publish(self, project: str, classes: list[str], seed: int = 0, config=None) -> int:
        """Publish an adapter for ``project`` (random prompts/LoRA, so it predicts something) -> version."""
        return publish_adapter(self.registry, self.services.models.weights, project, classes, seed, config)


def publish_adapter(registry, weights, project: str, classes: list[str], seed: int = 0, config=None) -> int:
    import torch

    model = new_adapter_model(weights, IMAGE_SIZE, classes, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.class_prompts.copy_(torch.randn(model.class_prompts.shape, generator=generator))
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    # As if its training job measured its decoder better on clicks: clicks carry its class prompts.
    return registry.publish(project, model.to_bytes({"clicks_decoder": "adapter"}), {"seed": seed}).version


@pytest.fixture(scope="module")
def module_redis_prefix() -> Iterator[str]:
    prefix = f"test-backend-{uuid.uuid4().hex[:12]}"
    yield prefix
    _delete_prefix(redis.Redis.from_url(REDIS_URL), prefix)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_app(app, log_level: str = "warning", **config) -> tuple[str, uvicorn.Server, threading.Thread]:
    """Serve ``app`` for real (uvicorn, its lifespan included) on a free loopback port, in a thread;
    returns (base URL, server, thread). Stop it with ``server.should_exit = True`` and a join."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level=log_level, **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start within 60 s"
    return f"http://127.0.0.1:{server.config.port}", server, thread


def start_backend(data_dir: Path, prefix: str, **overrides) -> tuple[Backend, Callable[[], None]]:
    settings = make_settings(data_dir, prefix, **overrides)
    registry = LocalRegistry(data_dir / "adapters")
    scheduler = RecordingScheduler()
    client = TestClient(create_app(settings, registry=registry, scheduler=scheduler))
    client.__enter__()
    return Backend(client, settings, registry, scheduler), lambda: client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def backend(tmp_path_factory, module_redis_prefix: str) -> Iterator[Backend]:
    """One app per test module (the model loads once); tests use distinct project ids."""
    app, stop = start_backend(tmp_path_factory.mktemp("backend"), module_redis_prefix)
    yield app
    stop()


@pytest.fixture
def make_backend(tmp_path, redis_prefix: str) -> Iterator[Callable[..., Backend]]:
    """Factory for an app with specific settings (auth, limits), stopped after the test."""
    stops = []

    def factory(**overrides) -> Backend:
        app, stop = start_backend(tmp_path / f"app{len(stops)}", redis_prefix, **overrides)
        stops.append(stop)
        return app

    yield factory
    for stop in stops:
        stop()


def brush_task(task_id: int, url: str, project: int | None = None, key: str = "image") -> dict:
    """A task as Label Studio serialises it into /predict."""
    task = {"id": task_id, "data": {key: url}, "meta": {}, "created_at": "2025-01-01T00:00:00Z",
            "updated_at": "2025-01-01T00:00:00Z", "is_labeled": False, "overlap": 1, "inner_id": task_id,
            "total_annotations": 0, "cancelled_annotations": 0, "total_predictions": 0, "annotations": [],
            "predictions": [], "file_upload": None}
    if project is not None:
        task["project"] = project
    return task


def predict_body(project: str, tasks: list[dict], config: str = BRUSH_CONFIG, context: dict | None = None) -> dict:
    """A /predict body shaped as Label Studio 1.20+ sends it."""
    return {"tasks": tasks, "model_version": None, "project": project, "label_config": config,
            "params": {"login": None, "password": None, "context": context}}


def setup_body(project: str, config: str = BRUSH_CONFIG, extra_params=None) -> dict:
    """/setup as Label Studio 1.20+ sends it."""
    return {"project": project, "schema": config, "hostname": "http://localhost:8080",
            "access_token": "0123456789abcdef", "model_version": None, "extra_params": extra_params}


def ls_created_at(project: str) -> str:
    """The project's ``created_at`` as Label Studio's webhooks send it (ISO 8601, microseconds, UTC)."""
    moment = datetime.fromtimestamp(created_of(project) or 0, UTC).replace(microsecond=250_000)
    return moment.isoformat().replace("+00:00", "Z")


def keypoint(x: float, y: float, label: str = "cat", positive: bool | None = True, width: int = 333,
             height: int = 217, from_name: str = "kp", to_name: str = "image") -> dict:
    region = {"original_width": width, "original_height": height, "image_rotation": 0,
              "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": [label]},
              "id": uuid.uuid4().hex[:10], "from_name": from_name, "to_name": to_name,
              "type": "keypointlabels", "origin": "manual"}
    if positive is not None:
        region["is_positive"] = positive
    return region


def rectangle(x: float, y: float, w: float, h: float, label: str = "dog", width: int = 333,
              height: int = 217) -> dict:
    return {"original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]},
            "id": uuid.uuid4().hex[:10], "from_name": "rect", "to_name": "image", "type": "rectanglelabels",
            "origin": "manual", "is_positive": True}
