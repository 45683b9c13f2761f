"""``Services``: everything the endpoints use, built once in the app's lifespan (``build_services``).

A module of its own so that the protocol routes (``backend.app``) and the admin console
(``backend.admin``) both read it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from backend.health import HealthMonitor
from backend.image_source import ImageSource
from backend.model_service import ModelService
from backend.predict import PredictionService
from backend.preencode import PreEncoder
from backend.project_keys import ProjectDirectory
from backend.project_settings import ProjectSettingsStore
from backend.recovery import Recovery
from backend.settings import Settings
from backend.training_link import rq_scheduler, start_embedded_worker
from backend.webhook import TrainingScheduler, WebhookHandler
from training.jobs.embedded import EmbeddedTraining
from training.jobs.redis_conn import RedisHandle, open_redis
from training.jobs.scheduler import TrainingScheduler as RqScheduler
from training.registry import AdapterRegistry, open_registry
from training.registry.factory import CONNECTED_REDIS

__all__ = ["SchedulerFactory", "Services", "build_services", "open_adapter_registry"]

SchedulerFactory = Callable[[RedisHandle, Settings], TrainingScheduler]


@dataclass
class Services:
    """Everything the endpoints use, built once in the app's lifespan."""

    settings: Settings
    redis: RedisHandle
    registry: AdapterRegistry
    models: ModelService
    images: ImageSource
    store: ProjectSettingsStore
    predictions: PredictionService
    webhook: WebhookHandler
    scheduler: TrainingScheduler
    preencoder: PreEncoder
    projects: ProjectDirectory
    worker: EmbeddedTraining | None = None
    health: HealthMonitor | None = None
    recovery: Recovery | None = None
    closed: bool = field(default=False, init=False)

    def close(self) -> None:
        """Stop everything; again is a no-op (the app's shutdown and ``python -m backend`` both close)."""
        if self.closed:
            return
        self.closed = True
        for watcher in (self.recovery, self.health):
            if watcher is not None:
                watcher.close()
        self.preencoder.close()
        self.predictions.close()
        self.images.close()
        if self.worker is not None:
            self.worker.stop()  # before Redis: the worker records its shutdown (and its job's) there
        self.redis.close()


def open_adapter_registry(settings: Settings, handle: RedisHandle) -> AdapterRegistry:
    """The registry chosen by SAMLOOP_ADAPTER_STORE (auto: local with embedded Redis, else Redis)."""
    spec = settings.adapter_dir if settings.adapter_store == "local" else CONNECTED_REDIS
    return open_registry(spec, keep_last=settings.SAMLOOP_KEEP_VERSIONS, prefix=settings.SAMLOOP_REDIS_PREFIX,
                         cache_dir=settings.SAMLOOP_DATA_DIR / "adapter-cache", client=handle.client)


def build_services(settings: Settings, registry: AdapterRegistry | None = None,
                   scheduler: TrainingScheduler | None = None,
                   scheduler_factory: SchedulerFactory = rq_scheduler) -> Services:
    """Open Redis, the registry and the model, and wire the services; nothing is left open on failure."""
    runs_rq_jobs = scheduler is None and scheduler_factory is rq_scheduler
    handle = open_redis(settings.REDIS_URL, settings.SAMLOOP_DATA_DIR)
    try:
        registry = registry if registry is not None else open_adapter_registry(settings, handle)
        models = ModelService(settings, registry)
        images = ImageSource(settings)
        store = ProjectSettingsStore(handle.client, settings.SAMLOOP_REDIS_PREFIX)
        projects = ProjectDirectory(handle.client, settings.SAMLOOP_REDIS_PREFIX, registry, store)
        predictions = PredictionService(models, images, store, projects.resolve)
        scheduler = scheduler if scheduler is not None else scheduler_factory(handle, settings)
        webhook = WebhookHandler(handle.client, settings.SAMLOOP_REDIS_PREFIX, scheduler, store)
        preencoder = PreEncoder(models, predictions, images, store, settings.PREENCODE_MAX_TASKS,
                                settings.PREENCODE_RELIST_SECONDS)
        predictions.encode_ahead = preencoder.submit
    except BaseException:
        handle.close()
        raise
    services = Services(settings, handle, registry, models, images, store, predictions, webhook, scheduler,
                        preencoder, projects)
    if handle.embedded and settings.SAMLOOP_EMBEDDED_WORKER and runs_rq_jobs:
        # Nobody else can reach an embedded Redis: run the training jobs next to the backend.
        services.worker = start_embedded_worker(handle, settings)
    watch_dependencies(services)
    return services


def watch_dependencies(services: Services) -> None:
    """The health thread (Redis, worker) and the recovery of missed events: now, and when Redis comes back."""
    queue = services.scheduler.queue.name if isinstance(services.scheduler, RqScheduler) else None
    services.health = HealthMonitor(services.redis, queue, lambda: services.worker)
    services.recovery = recovery = Recovery(services)
    services.health.on_redis_back.append(lambda: recovery.request("Redis came back"))
    services.health.start()
    recovery.request("start-up")
