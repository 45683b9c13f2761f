"""The admin API under /admin/api (Bearer ADMIN_TOKEN): see the projects, switch them, manage versions
and training.

- ``GET  /admin/api/projects``: ``{"projects": [...], "switches": {name: JSON schema}, "model": {...},
  "health": {...}}`` (health: what /health says of Redis and the training worker, ``backend.health``)
- ``GET  /admin/api/projects/{id}``: one project (404 when neither the registry nor the settings know it)
- ``PATCH /admin/api/projects/{id}``: switches, e.g. ``{"predictions": false}`` (the names of
  ``backend.project_settings.SWITCHES``; the same store Label Studio's extra params write)
- ``POST /admin/api/projects/{id}/activate`` ``{"version": n}``: roll back or forward
- ``DELETE /admin/api/projects/{id}/versions/{n}``: not the active one, nor the pinned one (409)
- ``POST /admin/api/projects/{id}/train``: queue a run now (auto-training off or not)
- ``POST /admin/api/projects/{id}/cancel``: stop the running job and cancel the queued one
- ``POST /admin/api/projects/{name}/move`` ``{"to": key}``: move the adapters and switches stored under
  ``name`` exactly (a bare id is not resolved here) to another key, e.g. what a bare id held before
  keys named the Label Studio instance (``backend.project_keys``) to ``"3.1712345678"``

Every change answers the project as ``GET`` would after it. Model and registry work runs in the
threadpool (plain ``def`` endpoints). Errors are the backend's domain errors, answered through its one
map (``backend.errors.STATUS_OF``): ``{"detail": ...}`` with 404, 409, 422 or 503; only the token check
answers 401 itself (with its ``WWW-Authenticate`` header).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import APIRouter, Body, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from backend.admin.auth import require_admin_token
from backend.admin.overview import all_projects, control_of, project_summary, switch_schema
from backend.errors import Conflict, ParameterError, ProjectNotFound, Unavailable, project_param, registry_access
from backend.project_keys import project_of
from backend.project_settings import check_pinned_version, validate_changes
from backend.schemas import ActivateRequest
from backend.services import Services
from training.jobs.redis_conn import RedisUnavailable
from training.jobs.scheduler import TrainingScheduler
from training.registry import VersionNotFound

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/admin/api", dependencies=[Depends(require_admin_token)], tags=["admin"])


def _services(request: Request) -> Services:
    return request.app.state.services


def _stored_versions(services: Services, project: str) -> list[int]:
    with registry_access():
        return [info.version for info in services.registry.versions(project)]


def _training(services: Services) -> TrainingScheduler:
    control = control_of(services)
    if control is None:
        raise Unavailable("no training queue is connected to this backend (it runs with a stand-in scheduler): "
                          "train and cancel are unavailable")
    return control


@router.get("/projects")
def list_projects(request: Request) -> dict:
    services = _services(request)
    projects = [project_summary(services, p) for p in all_projects(services)]
    health = services.health.report() if services.health is not None else None
    return {"projects": projects, "switches": switch_schema(), "model": services.models.describe(), "health": health}


@router.get("/projects/{project}")
def get_project(request: Request, project: str) -> dict:
    project = project_of(request, project)
    services = _services(request)
    if project not in all_projects(services):
        raise ProjectNotFound(f"project {project} is unknown here: it has no adapter versions and no settings "
                              "(connect it in Label Studio, or PATCH a switch)")
    return project_summary(services, project)


@router.patch("/projects/{project}")
def patch_project(request: Request, project: str, changes: dict[str, Any] = Body(...)) -> dict:  # noqa: B008
    project = project_of(request, project)
    services = _services(request)
    checked = validate_changes(changes)
    if checked.get("pinned_version") is not None:
        with registry_access():
            check_pinned_version(services.registry, project, checked["pinned_version"])
    services.store.update(project, checked)
    if checked.get("preencode"):
        services.preencoder.request(project, "switched on in the admin console")
    log.info("project %s: switches %s set through the admin console", project, checked)
    return project_summary(services, project)


@router.post("/projects/{project}/activate")
def activate_version(request: Request, project: str, body: ActivateRequest) -> dict:
    project = project_of(request, project)
    services = _services(request)
    with registry_access():
        services.registry.activate(project, body.version)
    log.info("project %s: version %s activated through the admin console", project, body.version)
    return project_summary(services, project)


@router.delete("/projects/{project}/versions/{version}")
def delete_version(request: Request, project: str, version: int) -> dict:
    project = project_of(request, project)
    services = _services(request)
    stored = _stored_versions(services, project)
    if version not in stored:
        raise VersionNotFound(project, version, stored)
    pinned = services.store.get(project).pinned_version
    if version == pinned:
        raise Conflict(f"version {version} of project {project} is pinned (pinned_version): unpin it first")
    try:
        with registry_access():
            services.registry.delete_version(project, version)
    except ValueError as exc:  # the active one: checked by the registry under its lock
        raise Conflict(str(exc)) from exc
    log.info("project %s: version %s deleted through the admin console", project, version)
    return project_summary(services, project)


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    full: bool = Field(False, description="retrain from scratch instead of from the active version")


@router.post("/projects/{project}/train")
def train_now(request: Request, project: str, body: TrainRequest | None = None) -> dict:
    project = project_of(request, project)
    services = _services(request)
    outcome = _training(services).train_now(project, full=body is not None and body.full)
    services.store.remember_project(project)  # listed from now on, so its job shows in the console
    return {"training": outcome, "project": project_summary(services, project)}


class MoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str = Field(min_length=1, max_length=64)


@router.post("/projects/{project}/move")
def move_project(request: Request, project: str, body: MoveRequest) -> dict:
    source, target = project_param(project), project_param(body.to)
    if source == target:
        raise ParameterError(f"project {source} cannot be moved onto itself")
    services = _services(request)
    moved = services.projects.move(source, target)  # TargetTaken is a Conflict: 409
    if not moved:
        raise ProjectNotFound(str(moved))
    log.info("%s, through the admin console", moved)
    return {"moved": str(moved), "project": project_summary(services, target)}


@router.post("/projects/{project}/cancel")
def cancel_training(request: Request, project: str) -> dict:
    project = project_of(request, project)
    services = _services(request)
    try:
        outcome = _training(services).cancel(project)
    except redis.RedisError as exc:
        raise RedisUnavailable(f"cannot cancel training of project {project}: Redis unreachable ({exc})") from exc
    return {"training": outcome, "project": project_summary(services, project)}
