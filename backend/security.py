"""Access control and request limits.

- HTTP basic auth (BASIC_AUTH_USER/PASS) on everything except ``/health`` and ``/`` (Label Studio
  polls those without credentials before it is configured).
- ``/webhook`` also accepts WEBHOOK_SECRET, because the webhook Label Studio creates for a backend
  cannot send basic auth: as header ``X-Samloop-Webhook-Secret`` (set it in the webhook's
  headers in LS's project settings) or as query ``?secret=`` (for an edited webhook URL).
  With WEBHOOK_SECRET set, the webhook needs the secret or basic auth; with neither configured,
  it is open like the rest.
- Bodies above MAX_PAYLOAD_MB are refused with 413 before they are read into memory, and bodies
  not received whole within REQUEST_BODY_TIMEOUT seconds with 408 (uvicorn has no such timeout).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time

import anyio
from fastapi import Request
from fastapi.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.settings import Settings

SECRET_HEADER = "X-Samloop-Webhook-Secret"
SECRET_QUERY = "secret"
OPEN_PATHS = frozenset({"/", "/health"})


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def basic_auth_ok(request: Request, settings: Settings) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return False
    try:
        user, sep, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    # Both comparisons always run: no timing hint about which part was wrong.
    user_ok = _same(user, settings.BASIC_AUTH_USER)
    pass_ok = _same(password, settings.BASIC_AUTH_PASS)
    return bool(sep) and user_ok and pass_ok


def webhook_secret_ok(request: Request, settings: Settings) -> bool:
    given = request.headers.get(SECRET_HEADER) or request.query_params.get(SECRET_QUERY) or ""
    return bool(given) and _same(given, settings.WEBHOOK_SECRET)


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, detail=message, headers={"WWW-Authenticate": 'Basic realm="samloop"'})


def require_basic_auth(request: Request) -> None:
    """Dependency for every protected endpoint."""
    settings: Settings = request.app.state.settings
    if settings.basic_auth_enabled and not basic_auth_ok(request, settings):
        raise _unauthorized("HTTP basic auth required: the user and password set in BASIC_AUTH_USER/BASIC_AUTH_PASS")


def require_webhook_auth(request: Request) -> None:
    """Dependency for /webhook: basic auth or the shared secret."""
    settings: Settings = request.app.state.settings
    if not settings.basic_auth_enabled and not settings.WEBHOOK_SECRET:
        return
    if settings.basic_auth_enabled and basic_auth_ok(request, settings):
        return
    if settings.WEBHOOK_SECRET and webhook_secret_ok(request, settings):
        return
    ways = []
    if settings.WEBHOOK_SECRET:
        ways.append(f"header {SECRET_HEADER} (or ?{SECRET_QUERY}=) with WEBHOOK_SECRET")
    if settings.basic_auth_enabled:
        ways.append("HTTP basic auth")
    raise _unauthorized(f"webhook not authorised: send {' or '.join(ways)}")


class PayloadLimitMiddleware:
    """Refuses request bodies above ``max_bytes`` with 413 (by Content-Length, or while streaming), and
    bodies not complete ``body_timeout`` seconds after the first read with 408."""

    def __init__(self, app: ASGIApp, max_bytes: int, body_timeout: float = 60.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send, PayloadTooLarge(int(length), self.max_bytes))
            return
        received = 0
        deadline: float | None = None
        body_done = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, deadline, body_done
            if body_done:  # later reads only wait for a disconnect: no deadline
                return await receive()
            deadline = deadline if deadline is not None else time.monotonic() + self.body_timeout
            try:
                with anyio.fail_after(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                # An HTTPException: FastAPI passes it through body parsing to its answer.
                raise BodyTimeout(received, self.body_timeout) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:
                    raise PayloadTooLarge(received, self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyRefused as exc:
            if not response_started:
                await self._refuse(send, exc)

    async def _refuse(self, send: Send, exc: HTTPException) -> None:
        body = json.dumps({"detail": exc.detail}).encode()
        await send({"type": "http.response.start", "status": exc.status_code,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class BodyRefused(HTTPException):
    """A request body this service does not read to the end."""


class PayloadTooLarge(BodyRefused):
    def __init__(self, size: int, max_bytes: int) -> None:
        limit_mb = max_bytes / (1024 * 1024)
        super().__init__(413, detail=f"request body of {size} bytes or more exceeds the limit of {max_bytes} "
                                     f"bytes ({limit_mb:g} MB, MAX_PAYLOAD_MB)")
        self.size = size


class BodyTimeout(BodyRefused):
    def __init__(self, received: int, seconds: float) -> None:
        super().__init__(408, detail=f"request body not received within {seconds:g} s (REQUEST_BODY_TIMEOUT); "
                                     f"{received} bytes had arrived")
