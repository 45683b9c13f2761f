"""Access control and request limits.

- HTTP basic auth (BASIC_AUTH_USER/PASS) on everything except ``/health`` and ``/`` (Label Studio
  polls those without credentials before it is configured).
- ``/webhook`` also accepts WEBHOOK_SECRET, because the webhook Label Studio creates for a backend
  cannot send basic auth: as header ``X-Samloop-Webhook-Secret`` (set it in the webhook's
  headers in LS's project settings) or as query ``?secret=`` (for an edited webhook URL).
  With WEBHOOK_SECRET set, the webhook needs the secret or basic auth; with neither configured,
  it is open like the rest.
- Bodies above MAX_PAYLOAD_MB are refused with 413 before they are read into memory.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json

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
    """Refuses request bodies above ``max_bytes`` with 413 (by Content-Length, or while streaming)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send, int(length))
            return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # An HTTPException: FastAPI passes it through body parsing to its 413 answer.
                    raise PayloadTooLarge(received, self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except PayloadTooLarge as exc:
            if not response_started:
                await self._refuse(send, exc.size)

    async def _refuse(self, send: Send, size: int) -> None:
        body = json.dumps({"detail": PayloadTooLarge(size, self.max_bytes).detail}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class PayloadTooLarge(HTTPException):
    def __init__(self, size: int, max_bytes: int) -> None:
        limit_mb = max_bytes / (1024 * 1024)
        super().__init__(413, detail=f"request body of {size} bytes or more exceeds the limit of {max_bytes} "
                                     f"bytes ({limit_mb:g} MB, MAX_PAYLOAD_MB)")
        self.size = size
