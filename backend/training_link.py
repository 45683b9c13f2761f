"""The backend's connection to the training pipeline: the rq scheduler, and the local worker process.

The webhook hands training triggers to ``training.jobs.scheduler.TrainingScheduler`` (debounced,
coalesced rq jobs). With the embedded Redis (REDIS_URL unset) nobody else would run the jobs, so
the backend starts one ``python -m training.jobs.worker`` process next to itself (``training.jobs.embedded``
restarts it if it dies), at a lower CPU priority so that clicks win, and stops it on exit.
The job arguments travel through Redis, so they carry no secrets: the Label Studio API key reaches
the worker through its environment.
"""

from __future__ import annotations

from typing import Any

from backend.project_settings import ProjectSettingsStore
from backend.settings import Settings
from training.jobs.embedded import EmbeddedTraining
from training.jobs.redis_conn import RedisHandle
from training.jobs.scheduler import TrainingScheduler


def job_settings(settings: Settings) -> dict[str, Any]:
    """``training.pipeline.settings.JobSettings`` fields from the backend's settings (same environment names)."""
    return {
        "label_studio_url": settings.LABEL_STUDIO_URL,
        "label_studio_api_key": "",  # from the worker's own environment: job arguments sit in Redis
        "model_type": settings.SAM_MODEL,
        "checkpoint": settings.SAM_CHECKPOINT,
        "image_size": settings.SAM_IMAGE_SIZE,
        # Only a local adapter store ties the worker to the backend's directory (absolute: a worker may
        # run from another directory); with Redis the worker keeps its caches in its own SAMLOOP_DATA_DIR.
        "data_dir": str(settings.SAMLOOP_DATA_DIR.expanduser().resolve()) if settings.adapter_store == "local" else "",
        "model_cache": str(settings.SAMLOOP_MODEL_CACHE or ""),
        # "" = <data_dir>/adapters (the backend's local store); "redis" = the Redis the job came from.
        "registry": "" if settings.adapter_store == "local" else "redis",
        "redis_prefix": settings.SAMLOOP_REDIS_PREFIX,
        "keep_versions": settings.SAMLOOP_KEEP_VERSIONS,
        # Machine-local: each worker's own DEVICE / PRECISION decide (a GPU worker beside a CPU backend).
        "device": "",
        "precision": "",
        "train_max_seconds": settings.TRAIN_MAX_SECONDS,
        "min_annotations": settings.TRAIN_MIN_ANNOTATIONS,
    }


def rq_scheduler(handle: RedisHandle, settings: Settings) -> TrainingScheduler:
    """The rq TrainingScheduler on the backend's Redis (a ``backend.webhook.TrainingScheduler``).

    Raises ValueError naming a setting the training job would refuse (the scheduler checks the job
    settings when it computes the job timeout): at startup, not later in the worker.
    """
    store = ProjectSettingsStore(handle.client, settings.SAMLOOP_REDIS_PREFIX)
    return TrainingScheduler(handle.client, job_settings(settings), min_annotations=settings.TRAIN_MIN_ANNOTATIONS,
                             prefix=settings.SAMLOOP_REDIS_PREFIX,
                             job_overrides=lambda project: project_job_settings(store, project))


def project_job_settings(store: ProjectSettingsStore, project: str) -> dict[str, Any]:
    """The job settings a project's switches decide (its adapter kind), read when its job is queued."""
    return {"adapter_kind": store.get(project).adapter}


def start_embedded_worker(handle: RedisHandle, settings: Settings) -> EmbeddedTraining:
    """A supervised ``python -m training.jobs.worker`` (restarted if it dies) on the backend's embedded Redis."""
    env = {"LOG_LEVEL": settings.LOG_LEVEL, "SAMLOOP_WORKER_NICE": str(settings.SAMLOOP_WORKER_NICE)}
    if settings.LABEL_STUDIO_API_KEY:
        env["LABEL_STUDIO_API_KEY"] = settings.LABEL_STUDIO_API_KEY
    return EmbeddedTraining(settings.SAMLOOP_DATA_DIR, redis_url=handle.url, env=env).start()
