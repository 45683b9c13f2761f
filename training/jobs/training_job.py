"""The rq training job: wait out the burst, claim the project's events, run the pipeline, follow up.

``run_training_job(project, settings)`` is what the queue runs; its arguments are JSON-safe (a
project id and a ``JobSettings`` dict). Settings the dict leaves out come from the worker's
environment (the same variable names as the backend: LABEL_STUDIO_URL, SAM_MODEL, ...), so a
deployment may keep the Label Studio key out of Redis by giving it to workers only.

The run itself (sync, split, train, judge, publish) is ``training.pipeline.run.run_project``, the same
for the offline CLI. A worker process keeps its base models in memory between jobs (``_MODELS``).

Failure never loses anything: the registry publishes atomically, so a crash, kill or timeout
before publishing leaves the active adapter and the version list as they were; the run's events
stay "not done" (and a requested full retrain stays requested) and rq's Retry runs the job again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rq import get_current_job
from rq.job import Job

from training.jobs.progress import JobProgress
from training.jobs.project_run import ProjectRun
from training.jobs.scheduler import TrainingScheduler
from training.model.weights import resolve_checkpoint
from training.pipeline.models import BaseModels
from training.pipeline.run import RunServices, run_project
from training.pipeline.settings import JobSettings
from training.registry import AdapterRegistry, open_registry

__all__ = ["run_training_job", "train_project"]

log = logging.getLogger(__name__)

# The worker process's base models, kept between jobs (a fresh build is most of a second per model).
_MODELS = BaseModels()


def open_job_registry(settings: JobSettings, job: Job | None) -> AdapterRegistry:
    """The registry ``settings.registry`` names ("redis": the Redis the job came from)."""
    spec = settings.registry or str(Path(settings.data_dir) / "adapters")
    return open_registry(spec, keep_last=settings.keep_versions, prefix=settings.redis_prefix,
                         cache_dir=Path(settings.data_dir) / "adapter-cache",
                         client=job.connection if job is not None else None)


def preload_base_model(settings: JobSettings) -> None:
    """Build the base model of ``settings`` into this process's cache (a forking worker does this once), and
    import peft, which every adapter build needs: imported in each forked job it took 1.8 s of a 15 s run."""
    import peft  # noqa: F401

    weights = resolve_checkpoint(settings.model_type, settings.checkpoint, settings.model_cache or None)
    _MODELS.sam(weights, settings.image_size)


def train_project(project: str, settings: JobSettings, progress: JobProgress | None = None,
                  job: Job | None = None, full: bool = False) -> dict[str, Any]:
    """One run of ``training.pipeline.run.run_project`` with this process's base models.

    ``full``: retrain from scratch, even where a warm start is possible.
    """
    services = RunServices(open_job_registry(settings, job), progress or JobProgress(None, project), _MODELS,
                           job.id if job is not None else None, full)
    return run_project(project, settings, services)


def run_training_job(project: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The rq job: wait out the burst, claim the project's events, train, publish, follow up.

    Args:
        project: the registry's project id (Label Studio's numeric id, or "<id>.<timestamp>").
        settings: a ``JobSettings`` dict; empty fields come from the worker's environment.
    """
    resolved = JobSettings.resolve(settings)
    job = get_current_job()
    progress = JobProgress(job, project)
    if job is None:  # called directly (offline use): no queue, no coordination
        return train_project(project, resolved, progress)
    run = ProjectRun(job.connection, resolved.redis_prefix, project, job.id, resolved.debounce_seconds,
                     resolved.max_debounce_seconds, resolved.lock_ttl_seconds)
    progress.stage("debouncing", "waiting for the burst of annotation events to settle")
    if not run.begin():
        progress.stage(run.outcome["status"], run.outcome["reason"])
        return run.outcome
    full = run.take_full_request()
    try:
        with run.holding():
            outcome = train_project(project, resolved, progress, job, full=full)
    except Exception as exc:
        if full:
            run.request_full()  # the retry (or the next run) still retrains from scratch
        progress.stage("failed", f"training failed: {type(exc).__name__}: {exc}; the active adapter is unchanged")
        raise
    run.finish(outcome, TrainingScheduler.from_job(job))
    return outcome
