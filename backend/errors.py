"""Error answers: every bad request gets a 4xx whose ``detail`` names the problem; anything
unexpected becomes a JSON 500 with a message (and a logged traceback), never an HTML page.

``STATUS_OF`` is the one map from domain errors to HTTP statuses: endpoints raise the domain
error and ``install_error_handlers`` answers it with that status and the error's message.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.model_service import REGISTRY_OUTAGE
from backend.project_settings import SettingsError
from backend.prompts import PromptError
from backend.webhook import WebhookError
from training.jobs.redis_conn import RedisUnavailable
from training.labelstudio.label_config import LabelConfigError
from training.labelstudio.projects import project_key
from training.registry import VersionNotFound

__all__ = ["STATUS_OF", "Conflict", "ParameterError", "ProjectNotFound", "RegistryUnavailable", "Unavailable",
           "install_error_handlers", "registry_access"]

log = logging.getLogger(__name__)


class ParameterError(ValueError):
    """A path or query parameter is malformed; the message names it."""


def project_param(project: str) -> str:
    """A project path or query parameter as the project key (``training.labelstudio.projects``), or 422."""
    try:
        return project_key(project)
    except ValueError as exc:
        raise ParameterError(str(exc)) from exc


class RegistryUnavailable(RuntimeError):
    """The adapter registry's storage (Redis or the adapter directory) failed."""


class ProjectNotFound(LookupError):
    """Nothing is stored under a project key: no adapter versions, no settings."""


class Conflict(RuntimeError):
    """The change contradicts what is stored (deleting the active or pinned version, say); nothing changed."""


class Unavailable(RuntimeError):
    """This backend runs without the part a request needs (e.g. no training queue is connected)."""


STATUS_OF: dict[type[Exception], int] = {
    LabelConfigError: 422,
    SettingsError: 422,
    WebhookError: 422,
    PromptError: 422,
    ParameterError: 422,
    VersionNotFound: 404,
    ProjectNotFound: 404,
    Conflict: 409,
    RedisUnavailable: 503,
    RegistryUnavailable: 503,
    Unavailable: 503,
}


@contextmanager
def registry_access() -> Iterator[None]:
    """Around registry calls: a storage failure becomes ``RegistryUnavailable`` (503); a missing
    version stays ``VersionNotFound`` (404)."""
    try:
        yield
    except VersionNotFound:
        raise
    except REGISTRY_OUTAGE as exc:
        raise RegistryUnavailable(f"adapter registry unreachable: {exc}") from exc


def _location(loc: tuple) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def describe_validation(exc: RequestValidationError) -> tuple[str, list[dict]]:
    problems = []
    details = []
    for error in exc.errors():
        kind = error.get("type", "")
        where = _location(tuple(error.get("loc", ())))
        if kind == "json_invalid":
            ctx = error.get("ctx") or {}
            message = f"malformed JSON body: {ctx.get('error', error.get('msg'))}"
        elif kind == "missing":
            message = f"{where}: field required"
        else:
            given = error.get("input")
            shown = repr(given)
            message = f"{where}: {error.get('msg')} (got {shown[:80] + '…' if len(shown) > 80 else shown})"
        problems.append(message)
        details.append({"loc": [str(p) for p in error.get("loc", ())], "msg": error.get("msg"), "type": kind})
    return "; ".join(problems) or "invalid request", details


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    status = next(STATUS_OF[kind] for kind in type(exc).__mro__ if kind in STATUS_OF)
    # An outage is the operator's business; a bad request only the caller's.
    log.log(logging.WARNING if status >= 500 else logging.INFO, "%s %s: %d %s", request.method, request.url.path,
            status, exc)
    return JSONResponse({"detail": str(exc)}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    for kind in STATUS_OF:
        app.add_exception_handler(kind, _domain_error)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = describe_validation(exc)
        log.info("%s %s: 422 %s", request.method, request.url.path, message)
        return JSONResponse({"detail": message, "errors": details}, status_code=422)

    # Not an exception handler: Starlette re-raises after those, so the server logged every 500 a second time.
    app.add_middleware(UnexpectedErrorMiddleware)


class UnexpectedErrorMiddleware:
    """Anything no handler answered: logged once with its traceback, answered as a JSON 500, then dropped.

    The traceback's frames are cleared before the answer goes out: they hold the failed request's
    locals (a 3 GB tensor after a failed allocation stayed resident for minutes through them).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # the last line of defence: every other error has its own answer
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            detail = f"internal error ({type(exc).__name__}): {exc}"
            traceback.clear_frames(exc.__traceback__)
            del exc
            if not started:
                await JSONResponse({"detail": detail}, status_code=500)(scope, receive, send)
