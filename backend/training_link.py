"""The backend's connection to the training pipeline: the rq scheduler, and the local worker process.

The webhook hands training triggers to ``training.scheduler.TrainingScheduler`` (debounced,
coalesced rq jobs). With the embedded Redis (REDIS_URL unset) nobody else would run the jobs, so
the backend starts one ``python -m training.worker`` process next to itself and stops it on exit.
The job arguments travel through Redis, so they carry no secrets: the Label Studio API key reaches
the worker through its environment.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import Any

from backend.settings import Settings
from training.redis_conn import RedisHandle

log = logging.getLogger(__name__)

WORKER_STOP_TIMEOUT_S = 10.0


def job_settings(settings: Settings) -> dict[str, Any]:
    """``training.jobs.JobSettings`` fields from the backend's settings (same environment names)."""
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


def rq_scheduler(handle: RedisHandle, settings: Settings):
    """The rq TrainingScheduler on the backend's Redis (a ``backend.webhook.TrainingScheduler``)."""
    from training.scheduler import TrainingScheduler  # local: rq is only needed once training is wired

    values = job_settings(settings)
    try:
        from training.jobs import JobSettings

        JobSettings.from_dict({k: v for k, v in values.items() if v != ""})  # refuse a mismatch at startup
    except ImportError as exc:
        log.warning("training.jobs is not importable (%s); jobs will fail until it is", exc)
    return TrainingScheduler(handle.client, values, min_annotations=settings.TRAIN_MIN_ANNOTATIONS,
                             prefix=settings.SAMLOOP_REDIS_PREFIX)


class EmbeddedWorker:
    """One ``python -m training.worker`` child process on the embedded Redis."""

    def __init__(self, redis_url: str, settings: Settings) -> None:
        self.redis_url = redis_url
        self.settings = settings
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "REDIS_URL": self.redis_url, "LOG_LEVEL": self.settings.LOG_LEVEL}
        if self.settings.LABEL_STUDIO_API_KEY:
            env["LABEL_STUDIO_API_KEY"] = self.settings.LABEL_STUDIO_API_KEY
        command = [sys.executable, "-m", "training.worker", "--url", self.redis_url]
        self.process = subprocess.Popen(command, env=env)  # noqa: S603 - our own module, no shell
        log.info("started training worker (pid %s) on %s", self.process.pid, self.redis_url)

    def stop(self) -> None:
        """SIGTERM (rq finishes or abandons the job as on a warm shutdown), then kill after a timeout."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("training worker %s did not stop in %ss; killing it", process.pid, WORKER_STOP_TIMEOUT_S)
            process.kill()
            process.wait()
        log.info("training worker %s stopped", process.pid)
