"""The admin console: one place per project for what is served, how each version scored, what the
worker is doing, and the switches.

- ``auth``: ``Authorization: Bearer <ADMIN_TOKEN>``, constant-time, never from a query string.
- ``overview``: a project's summary, read from Redis and the registry (every process agrees).
- ``api``: the JSON API under /admin/api.
- ``page``: GET /admin/, a static page (``static/``) that polls the API.
- ``cli``: ``python -m backend admin ...``, the same API from a terminal.

``install_admin(app, settings)`` mounts it all when ADMIN_TOKEN is set; without it nothing is
mounted, so every /admin path answers 404.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports this package: it needs neither FastAPI nor the settings at run time
    from fastapi import FastAPI

    from backend.settings import Settings

__all__ = ["install_admin"]

log = logging.getLogger(__name__)


def install_admin(app: FastAPI, settings: Settings) -> bool:
    """Mount the console on ``app`` if ADMIN_TOKEN is set; returns whether it did."""
    if not settings.ADMIN_TOKEN:
        log.info("admin console off: ADMIN_TOKEN is not set (everything under /admin answers 404)")
        return False
    from backend.admin import api, page  # only an enabled console loads its routes

    app.include_router(api.router)
    app.include_router(page.router)
    app.mount("/admin/static", page.static_files(), name="admin-static")
    log.info("admin console on at /admin/ (Bearer ADMIN_TOKEN)")
    return True
