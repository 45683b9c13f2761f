"""GET /admin/: the console's page, plain HTML, CSS and JavaScript from ``static/`` (no build step).

The page itself needs no token (it holds no data); it asks for one and calls /admin/api with it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["STATIC_DIR", "router", "static_files"]

STATIC_DIR = Path(__file__).with_name("static")

router = APIRouter(tags=["admin"])


@router.get("/admin", include_in_schema=False)
def admin_root() -> RedirectResponse:
    # The page's relative URLs (api/..., static/...) resolve under /admin/ only.
    return RedirectResponse("/admin/", status_code=307)


@router.get("/admin/", include_in_schema=False)
def admin_page() -> FileResponse:
    # no-store: a stale page after an upgrade would call the API the old way.
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-store"})


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC_DIR)
