"""A small stand-in for Label Studio's HTTP API, served for real on a free local port.

It answers the calls samloop's export makes, shaped like Label Studio 1.23:
``GET /api/projects/{id}/``, ``GET /api/projects/{id}/export`` (JSON, labeled tasks),
``GET /api/tasks?project=`` (the paginated task list),
``POST /api/token/refresh/`` (personal access tokens), ``GET /api/version``, and image files at
``/data/upload/{project}/{name}`` and ``/storage-data/uploaded/?filepath=upload/{project}/{name}``.
Auth is ``Authorization: Token <legacy>`` or ``Bearer <access>``. Faults can be injected per path
prefix, and every request is logged (method, path, headers) for assertions.

What to put in it (regions, configs, images) is built by ``testkit.ls_annotations``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import jwt

LEGACY_TOKEN = "fake-legacy-token-0123456789"
_JWT_SECRET = "fake-label-studio-signing-key-0123456789"


def make_jwt(token_type: str, lifetime: float) -> str:
    now = int(time.time())
    return jwt.encode({"token_type": token_type, "exp": now + int(lifetime), "iat": now, "jti": uuid.uuid4().hex},
                      _JWT_SECRET, algorithm="HS256")


@dataclass
class Fault:
    prefix: str
    status: int
    times: int  # how many more requests fail; -1 = forever


@dataclass
class LoggedRequest:
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0


@dataclass
class _State:
    projects: dict[int, dict] = field(default_factory=dict)
    tasks: dict[int, list[dict]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # "upload/<project>/<name>" -> bytes
    faults: list[Fault] = field(default_factory=list)
    log: list[LoggedRequest] = field(default_factory=list)
    access_tokens: set[str] = field(default_factory=set)
    next_task: int = 1
    next_annotation: int = 1
    clock: int = 0


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up (keep-alive sockets closed at exit) are normal here, not test failures.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeLabelStudio:
    """Start with ``with FakeLabelStudio() as ls:``; ``ls.url`` is its base URL."""

    def __init__(self) -> None:
        self.legacy_token = LEGACY_TOKEN
        self.refresh_token = make_jwt("refresh", 3600)
        self.state = _State()
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-label-studio", daemon=True)

    # ----- lifecycle -----
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeLabelStudio:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ----- content -----
    def add_project(self, project_id: int, label_config: str, created_at: str | None = None) -> None:
        """``created_at`` (ISO 8601, e.g. "2024-04-05T19:34:38Z"): what the project answers, if given."""
        with self._lock:
            self.state.projects[project_id] = {"id": project_id, "title": "fake", "label_config": label_config,
                                               **({"created_at": created_at} if created_at else {})}
            self.state.tasks.setdefault(project_id, [])

    def add_image(self, project_id: int, name: str, data: bytes) -> str:
        """Store an uploaded file; returns the URL Label Studio puts in task data."""
        with self._lock:
            self.state.files[f"upload/{project_id}/{name}"] = data
        return f"/data/upload/{project_id}/{name}"

    def add_task(self, project_id: int, data: dict, annotations: list[dict] | None = None) -> int:
        """Add a task; each annotation dict needs ``result`` and may set was_cancelled, ground_truth, ..."""
        with self._lock:
            task_id = self.state.next_task
            self.state.next_task += 1
            stored = []
            for extra in annotations or []:
                annotation = {
                    "id": self.state.next_annotation,
                    "completed_by": 1,
                    "result": [],
                    "was_cancelled": False,
                    "ground_truth": False,
                    "created_at": "2026-01-01T10:00:00.000000Z",
                    "updated_at": "2026-01-01T10:00:00.000000Z",
                    "lead_time": 3.2,
                    "task": task_id,
                    "project": project_id,
                    **extra,
                }
                self.state.next_annotation += 1
                stored.append(annotation)
            self.state.tasks[project_id].append({
                "id": task_id, "data": data, "annotations": stored, "predictions": [], "drafts": [], "meta": {},
                "created_at": "2026-01-01T09:00:00.000000Z", "updated_at": "2026-01-01T10:00:00.000000Z",
                "inner_id": task_id, "total_annotations": sum(1 for a in stored if not a["was_cancelled"]),
                "cancelled_annotations": sum(1 for a in stored if a["was_cancelled"]),
                "total_predictions": 0, "project": project_id,
            })
            return task_id

    def _touch(self) -> str:
        """A new ``updated_at``, later than every earlier one (Label Studio moves it on every change)."""
        self.state.clock += 1
        return f"2026-01-02T00:00:{self.state.clock // 1000000:02d}.{self.state.clock % 1000000:06d}Z"

    def _find(self, task_id: int) -> tuple[int, dict]:
        for project_id, tasks in self.state.tasks.items():
            for task in tasks:
                if task["id"] == task_id:
                    return project_id, task
        raise KeyError(f"no task {task_id}")

    def set_annotations(self, task_id: int, annotations: list[dict]) -> None:
        """Replace a task's annotations (an annotator's edit, a new annotation or a deletion: ``[]``)."""
        with self._lock:
            project_id, task = self._find(task_id)
            stamp = self._touch()
            stored = []
            for extra in annotations:
                annotation = {"id": self.state.next_annotation, "completed_by": 1, "result": [],
                              "was_cancelled": False, "ground_truth": False, "created_at": stamp, "updated_at": stamp,
                              "task": task_id, "project": project_id, **extra}
                self.state.next_annotation += 1
                stored.append(annotation)
            task["annotations"] = stored
            task["total_annotations"] = sum(1 for a in stored if not a.get("was_cancelled"))
            task["cancelled_annotations"] = len(stored) - task["total_annotations"]
            task["updated_at"] = stamp

    def delete_task(self, task_id: int) -> None:
        with self._lock:
            project_id, task = self._find(task_id)
            self.state.tasks[project_id].remove(task)

    def fail(self, prefix: str, status: int, times: int = -1) -> None:
        """Answer ``status`` to the next ``times`` requests whose path starts with ``prefix`` (-1: always)."""
        with self._lock:
            self.state.faults.append(Fault(prefix, status, times))

    def requests_to(self, prefix: str) -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self.state.log if r.path.startswith(prefix)]

    # ----- request handling (called from server threads) -----
    def _take_fault(self, path: str) -> int | None:
        with self._lock:
            for fault in self.state.faults:
                if path.startswith(fault.prefix) and fault.times != 0:
                    if fault.times > 0:
                        fault.times -= 1
                    return fault.status
        return None

    def _authorised(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, token = header.partition(" ")
        if scheme == "Token":
            return token == self.legacy_token
        if scheme == "Bearer":
            with self._lock:
                return token in self.state.access_tokens
        return False

    def _issue_access(self, refresh: str) -> str | None:
        if refresh != self.refresh_token:
            return None
        access = make_jwt("access", 300)
        with self._lock:
            self.state.access_tokens.add(access)
        return access


class _Handler(BaseHTTPRequestHandler):
    """Answers for ``ls``; ``_make_handler`` binds one to each server."""

    ls: FakeLabelStudio
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep pytest output quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.ls.state.log[-1].status = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode())

    def _begin(self) -> tuple[str, dict[str, list[str]]] | None:
        parsed = urlparse(self.path)
        with self.ls._lock:
            self.ls.state.log.append(LoggedRequest(self.command, self.path, dict(self.headers.items())))
        status = self.ls._take_fault(parsed.path)
        if status is not None:
            self._json(status, {"detail": f"injected fault {status}"})
            return None
        return parsed.path, parse_qs(parsed.query)

    def do_POST(self) -> None:  # noqa: N802 - http.server API
        begun = self._begin()
        if begun is None:
            return
        path, _ = begun
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if path == "/api/token/refresh/":
            access = self.ls._issue_access(body.get("refresh", ""))
            if access is None:
                self._json(401, {"detail": "Token is invalid or expired"})
            else:
                self._json(200, {"access": access})
            return
        self._json(404, {"detail": "not found"})

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        begun = self._begin()
        if begun is None:
            return
        path, query = begun
        if path in ("/api/version", "/api/version/"):
            self._json(200, {"release": "1.23.2", "edition": "Community"})
            return
        if not self.ls._authorised(self.headers.get("Authorization")):
            self._json(401, {"detail": "Authentication credentials were not provided."})
            return
        if path.startswith(("/data/upload/", "/storage-data/uploaded")):
            self._file(path, query)
            return
        parts = [p for p in path.split("/") if p]
        if parts == ["api", "tasks"]:
            self._task_page(query)
            return
        if len(parts) >= 3 and parts[:2] == ["api", "projects"] and parts[2].isdigit():
            self._project(int(parts[2]), parts[3:], query)
            return
        self._json(404, {"detail": "not found"})

    def _file(self, path: str, query: dict[str, list[str]]) -> None:
        key = query.get("filepath", [""])[0] if path.startswith("/storage-data") else path[len("/data/"):]
        with self.ls._lock:
            data = self.ls.state.files.get(key)
        if data is None:
            self._json(404, {"detail": f"file {key} not found"})
        else:
            self._send(200, data, "application/octet-stream")

    def _task_page(self, query: dict[str, list[str]]) -> None:
        """``GET /api/tasks?project=&page=&page_size=``: Label Studio's paginated task list (404 past the end)."""
        try:
            project_id = int(query["project"][0])
            page, size = int(query.get("page", ["1"])[0]), int(query.get("page_size", ["100"])[0])
        except (KeyError, ValueError):
            self._json(400, {"detail": "project, page and page_size must be integers"})
            return
        include = [f for f in query.get("include", [""])[0].split(",") if f]
        with self.ls._lock:
            tasks = [{"id": t["id"], "data": t["data"], "project": project_id, "updated_at": t["updated_at"],
                      "total_annotations": t["total_annotations"], "cancelled_annotations": t["cancelled_annotations"]}
                     for t in self.ls.state.tasks.get(project_id, [])]
        if include:  # Label Studio 1.23 answers only the fields named
            tasks = [{k: v for k, v in t.items() if k in include} for t in tasks]
        chosen = tasks[(page - 1) * size : page * size]
        if page > 1 and not chosen:
            self._json(404, {"detail": "Invalid page."})
            return
        self._json(200, {"tasks": chosen, "total": len(tasks), "total_annotations": 0, "total_predictions": 0})

    def _project(self, project_id: int, rest: list[str], query: dict[str, list[str]]) -> None:
        with self.ls._lock:
            project = self.ls.state.projects.get(project_id)
            tasks = json.loads(json.dumps(self.ls.state.tasks.get(project_id, [])))
        if project is None:
            self._json(404, {"detail": "Not found."})
        elif not rest:
            self._json(200, {**project, "task_number": len(tasks),
                             "num_tasks_with_annotations": sum(1 for t in tasks if t["annotations"])})
        elif rest == ["export"]:
            if query.get("export_type", ["JSON"])[0] != "JSON":
                self._json(400, {"detail": "only JSON in the fake"})
                return
            if query.get("download_all_tasks", ["false"])[0].lower() != "true":
                tasks = [t for t in tasks if t["annotations"]]
            if "ids[]" in query:  # as Label Studio: ``ids[]`` selects tasks, a plain ``ids`` is ignored
                wanted = {int(i) for i in query["ids[]"]}
                tasks = [t for t in tasks if t["id"] in wanted]
            self._json(200, tasks)
        else:
            self._json(404, {"detail": "not found"})


def _make_handler(ls: FakeLabelStudio) -> type[BaseHTTPRequestHandler]:
    return type("Handler", (_Handler,), {"ls": ls})


@contextmanager
def plain_file_server(files: dict[str, bytes]) -> Iterator[tuple[str, list[LoggedRequest]]]:
    """A second HTTP host serving ``files`` by path, logging headers: for 'token stays home' checks."""
    log: list[LoggedRequest] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:  # noqa: N802
            log.append(LoggedRequest("GET", self.path, dict(self.headers.items())))
            data = files.get(urlparse(self.path).path)
            self.send_response(200 if data is not None else 404)
            self.send_header("Content-Length", str(len(data or b"")))
            self.end_headers()
            self.wfile.write(data or b"")

    server = _QuietServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
