"""The FastAPI application: Label Studio's ML backend protocol plus a small admin API.

Protocol: GET / and /health, POST /setup, POST /predict, POST /webhook, GET /versions.
Admin: GET/PATCH /projects/{project}/settings, POST /projects/{project}/activate,
GET /projects/{project}/events (the admin console's API, ``backend.admin``, under /admin/api with
ADMIN_TOKEN, reads and writes the same Redis store). Operations: GET /metrics (Prometheus).

Model work runs in threads (plain ``def`` endpoints; /predict hands its body over itself), so the
event loop stays free for /health, which Label Studio polls with a one-second timeout. /predict has
threads of its own (PREDICT_THREADS at once): requests waiting on slow image downloads or the model
lock never hold the shared pool that /webhook (LS waits 1 s), /setup and the admin API answer from.
Errors are raised as domain exceptions; ``backend.errors`` maps them to statuses.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import Body, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, TypeAdapter, ValidationError

from backend.admin import install_admin
from backend.admin.overview import all_projects
from backend.errors import install_error_handlers, registry_access
from backend.metrics import metrics_endpoint
from backend.project_keys import project_of
from backend.project_settings import check_pinned_version, parse_extra_params, validate_changes
from backend.schemas import ActivateRequest, PredictRequest, SetupRequest, WebhookRequest
from backend.security import PayloadLimitMiddleware, require_basic_auth, require_webhook_auth
from backend.services import SchedulerFactory, Services, build_services
from backend.settings import Settings
from backend.training_link import rq_scheduler
from backend.versioning import model_version
from backend.webhook import TrainingScheduler, event_project, labeled_tasks
from training.labelstudio.label_config import parse_label_config
from training.registry import AdapterRegistry

log = logging.getLogger(__name__)

BodyModel = TypeVar("BodyModel", bound=BaseModel)
# What FastAPI would serialise a ``-> dict`` answer with (same bytes: NaN and inf become null), but run in
# /predict's own thread: a random model's speckled brush RLE is 0.4-1 MB of JSON, 5-12 ms that would
# otherwise hold the event loop /health answers from.
_ANSWER = TypeAdapter(dict)
_PREDICT_ANSWER_DOC = {200: {"description": "one result per task",
                             "content": {"application/json": {"schema": {"type": "object", "required": ["results"]}}}}}


class _LocalhostWarningFilter(logging.Filter):
    """The SDK warns about 'localhost' in LABEL_STUDIO_URL on every download; once is enough."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "`localhost` is not accessible inside of docker" not in record.getMessage():
            return True
        first, self.seen = not self.seen, True
        return first


def create_app(settings: Settings, *, registry: AdapterRegistry | None = None,
               scheduler: TrainingScheduler | None = None,
               scheduler_factory: SchedulerFactory = rq_scheduler, services: Services | None = None) -> FastAPI:
    """The ASGI app. Models load in the lifespan (on startup), not here, unless ``services`` are given.

    Args:
        settings: the environment (``Settings()`` reads it).
        registry: adapter registry to use instead of the one SAMLOOP_ADAPTER_STORE names.
        scheduler: training scheduler for webhook events; else ``scheduler_factory(redis, settings)``
            (default: rq jobs, plus a local worker process when Redis is embedded).
        services: already built (``python -m backend`` builds them before the server starts, so that a
            refusal is one line: ``backend.startup``); the app's shutdown closes them. For one lifespan only.
    """

    prebuilt = services

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logging.getLogger("backend").setLevel(settings.LOG_LEVEL)
        sdk_io_log = logging.getLogger("label_studio_sdk._extensions.label_studio_tools.core.utils.io")
        localhost_filter = _LocalhostWarningFilter()
        sdk_io_log.addFilter(localhost_filter)
        services = prebuilt if prebuilt is not None else build_services(settings, registry, scheduler,
                                                                        scheduler_factory)
        app.state.services = services
        app.state.predict_limiter = anyio.CapacityLimiter(settings.PREDICT_THREADS)
        log.info("samloop backend ready: %s", services.models.describe())
        try:
            yield
        finally:
            services.close()
            sdk_io_log.removeFilter(localhost_filter)

    app = FastAPI(title="samloop", summary="Label Studio ML backend: SAM masks with per-project LoRA adapters",
                  lifespan=lifespan)
    app.state.settings = settings
    app.add_middleware(PayloadLimitMiddleware, max_bytes=settings.max_payload_bytes,
                       body_timeout=settings.REQUEST_BODY_TIMEOUT)
    install_error_handlers(app)
    _add_protocol_routes(app)
    _add_admin_routes(app)
    install_admin(app, settings)
    return app


def services_of(request: Request) -> Services:
    return request.app.state.services


# ----- the Label Studio protocol ---------------------------------------------------------------------


def _add_protocol_routes(app: FastAPI) -> None:
    protected = [Depends(require_basic_auth)]
    app.add_api_route("/", health, methods=["GET"])
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/setup", setup, methods=["POST"], dependencies=protected)
    app.add_api_route("/predict", predict, methods=["POST"], dependencies=protected,
                      openapi_extra=_json_body_doc(PredictRequest), responses=_PREDICT_ANSWER_DOC)
    app.add_api_route("/webhook", webhook, methods=["POST"], dependencies=[Depends(require_webhook_auth)])
    app.add_api_route("/versions", versions, methods=["GET"], dependencies=protected)


async def health(request: Request, strict: bool = False) -> JSONResponse:
    """200 with ``"status": "DEGRADED"`` and the problems while Redis or the training worker is down
    (``backend.health`` says why not 503); ``?strict=true``: 503 then, for container health checks."""
    services = services_of(request)
    state = services.health.report() if services.health is not None else {"status": "UP", "problems": []}
    body = {**state, "model_class": "samloop", **services.models.describe(),
            "embedding_cache": services.models.cache.stats(),
            "embedding_store": services.models.store.stats() if services.models.store is not None else None,
            "encoded_images": services.models.encoded_images, "encoded_ahead": services.models.encoded_ahead}
    return JSONResponse(body, status_code=503 if strict and state["problems"] else 200)


def setup(request: Request, body: SetupRequest) -> dict:
    services = services_of(request)
    parse_label_config(body.label_config)
    changes = parse_extra_params(body.extra_params)
    project = body.project
    services.projects.claim(project)
    pinned = changes.get("pinned_version")
    if pinned is not None:
        with registry_access():
            check_pinned_version(services.registry, project, pinned)
    # Without switches there is nothing to write: a Redis outage must not fail LS's connect.
    current = services.store.update(project, changes) if changes else services.store.get(project)
    services.store.remember_project(project, body.label_config)
    services.images.remember_setup(project, body.hostname, body.access_token)
    services.preencoder.request_on_setup(project, body.label_config, settings_changed=bool(changes))
    prepared = services.models.prepare(services.models.choose(project, current.pinned_version))
    log.info("setup project %s: model_version %s, settings %s", project, prepared.choice.model_version,
             current.model_dump())
    return {"model_version": prepared.choice.model_version}


async def predict(request: Request) -> Response:
    # The raw body goes straight to pydantic's JSON parser (see parse_json_body), and the answer is
    # serialised, off the event loop.
    raw = await request.body()
    answer = await anyio.to_thread.run_sync(_predict, services_of(request), raw,
                                            limiter=request.app.state.predict_limiter)
    return Response(answer, media_type="application/json")


def _predict(services: Services, raw: bytes) -> bytes:
    return _ANSWER.dump_json(services.predictions.predict(parse_json_body(PredictRequest, raw)))


def webhook(request: Request, body: WebhookRequest) -> JSONResponse:
    event = body.model_dump()
    services, project = services_of(request), event_project(event)
    project = None if project is None else services.projects.resolve(project)
    outcome = services.webhook.handle(body.action, project, labeled_tasks(event))
    if body.action == "TASKS_CREATED" and project is not None:
        services.preencoder.request(project, "tasks imported")
    return JSONResponse(outcome, status_code=201 if outcome["status"] == "accepted" else 200)


def versions(request: Request, project: str | None = None) -> dict:
    services = services_of(request)
    projects = [project_of(request, project)] if project is not None else all_projects(services)
    base = services.models.base
    listed, details, active = [], [], {}
    with registry_access():
        for name in projects:
            for info in services.registry.versions(name):
                version = model_version(base, name, info.version)
                listed.append(version)
                details.append({"model_version": version, **info.to_dict()})
                if info.active:
                    active[name] = version
    untrained = model_version(base, None, None)
    return {"versions": [untrained, *listed], "active": active, "details": details}


def parse_json_body(model: type[BodyModel], raw: bytes) -> BodyModel:
    """``raw`` parsed and validated by pydantic in one pass.

    For /predict this is ~4x faster than a FastAPI body parameter (json.loads, then validation of the
    Python objects): the tasks' stored predictions are skipped without becoming Python objects
    (a click carrying 1.4 MB of stored brush RLE: 18 -> 5 ms).
    """
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from exc


def _json_body_doc(model: type[BaseModel]) -> dict:
    """OpenAPI description of a JSON body that the endpoint reads itself."""
    # Only the top level: nested models' $defs would point nowhere inside the OpenAPI document.
    schema = {"type": "object", "description": (model.__doc__ or "").strip(),
              "required": [name for name, field in model.model_fields.items() if field.is_required()]}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# ----- the admin API ---------------------------------------------------------------------------------


def _add_admin_routes(app: FastAPI) -> None:
    protected = [Depends(require_basic_auth)]
    app.add_api_route("/projects/{project}/settings", get_settings, methods=["GET"], dependencies=protected)
    app.add_api_route("/projects/{project}/settings", patch_settings, methods=["PATCH"], dependencies=protected)
    app.add_api_route("/projects/{project}/activate", activate, methods=["POST"], dependencies=protected)
    app.add_api_route("/projects/{project}/events", events, methods=["GET"], dependencies=protected)
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], dependencies=protected)


def get_settings(request: Request, project: str) -> dict:
    project = project_of(request, project)
    services = services_of(request)
    settings = services.store.get(project)
    choice = services.models.choose(project, settings.pinned_version)
    return {"project": project, "settings": settings.model_dump(), "model_version": choice.model_version,
            "preencode_progress": services.preencoder.progress(project)}


def patch_settings(request: Request, project: str, changes: dict[str, Any] = Body(...)) -> dict:  # noqa: B008
    project = project_of(request, project)
    services = services_of(request)
    checked = validate_changes(changes)
    if checked.get("pinned_version") is not None:
        with registry_access():
            check_pinned_version(services.registry, project, checked["pinned_version"])
    settings = services.store.update(project, checked)
    if checked.get("preencode"):
        services.preencoder.request(project, "switched on")
    choice = services.models.choose(project, settings.pinned_version)
    return {"project": project, "settings": settings.model_dump(), "model_version": choice.model_version,
            "preencode_progress": services.preencoder.progress(project)}


def activate(request: Request, project: str, body: ActivateRequest) -> dict:
    project = project_of(request, project)
    services = services_of(request)
    with registry_access():
        info = services.registry.activate(project, body.version)
    log.info("project %s: version %s activated through the admin API", project, body.version)
    return {"project": project, "active": model_version(services.models.base, project, info.version)}


def events(request: Request, project: str) -> dict:
    project = project_of(request, project)
    return {"project": project, "events": services_of(request).webhook.counts(project)}
