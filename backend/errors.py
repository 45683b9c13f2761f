"""Error answers: every bad request gets a 4xx whose ``detail`` names the problem; anything
unexpected becomes a JSON 500 with a message (and a logged traceback), never an HTML page."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)


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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = describe_validation(exc)
        log.info("%s %s: 422 %s", request.method, request.url.path, message)
        return JSONResponse({"detail": message, "errors": details}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}): {exc}"}, status_code=500)
