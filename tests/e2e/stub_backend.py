"""A stand-in ML backend that speaks the Label Studio protocol minimally and records every call.

It lets the harness check what Label Studio sends (health, setup, predict, webhooks) without a model.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PredictFn = Callable[[dict[str, Any]], list[dict[str, Any]]]


@dataclass
class RecordedCall:
    method: str
    path: str
    body: Any
    headers: dict[str, str]


def empty_predictions(body: dict[str, Any]) -> list[dict[str, Any]]:
    """One prediction with no regions per task: the smallest answer LS stores as a prediction."""
    return [{"result": [], "score": 0.0, "model_version": StubMLBackend.MODEL_VERSION} for _ in body["tasks"]]


@dataclass
class StubMLBackend:
    """``/health``, ``/setup``, ``/predict``, ``/webhook``, ``/versions`` on 127.0.0.1:<port>.

    ``predict_fn(body) -> results`` answers ``/predict`` (one item per task in ``body["tasks"]``).
    """

    MODEL_VERSION = "stub-1"

    predict_fn: PredictFn = empty_predictions
    calls: list[RecordedCall] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("stub backend is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> StubMLBackend:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass

            def _reply(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                path = self.path.split("?", 1)[0].rstrip("/") or "/"
                with stub._lock:
                    stub.calls.append(RecordedCall(self.command, path, body, dict(self.headers.items())))
                if path in ("/", "/health"):
                    self._reply(200, {"status": "UP", "model_class": "StubMLBackend"})
                elif path == "/setup":
                    self._reply(200, {"model_version": stub.MODEL_VERSION})
                elif path == "/predict":
                    self._reply(200, {"results": stub.predict_fn(body or {"tasks": []})})
                elif path == "/webhook":
                    self._reply(201, {})
                elif path == "/versions":
                    self._reply(200, {"versions": [stub.MODEL_VERSION]})
                else:
                    self._reply(404, {"detail": f"no route {path}"})

            do_GET = _handle  # noqa: N815 - http.server's naming
            do_POST = _handle  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True, name="stub-ml-backend").start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def calls_to(self, path: str) -> list[RecordedCall]:
        with self._lock:
            return [call for call in self.calls if call.path == path]

    def webhook_actions(self) -> list[str]:
        return [call.body.get("action", "") for call in self.calls_to("/webhook") if isinstance(call.body, dict)]

    def wait_for(self, predicate: Callable[[StubMLBackend], bool], timeout: float = 20.0) -> bool:
        """Poll ``predicate(self)`` until true or ``timeout`` seconds pass; returns the last value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.2)
        return predicate(self)
