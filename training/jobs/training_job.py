"""The rq training job: export -> split -> warm start -> train -> evaluate both -> publish.

``run_training_job(project, settings)`` is what the queue runs; its arguments are JSON-safe (a
project id and a ``JobSettings`` dict). Settings the dict leaves out come from the worker's
environment (the same variable names as the backend: LABEL_STUDIO_URL, SAM_MODEL, ...), so a
deployment may keep the Label Studio key out of Redis by giving it to workers only.

Failure never loses anything: the registry publishes atomically, so a crash, kill or timeout
before ``publish`` leaves the active adapter and the version list as they were; the run's events
stay "not done" and rq's Retry runs the job again with back-off.

Promotion: the candidate becomes active when its held-out mean IoU is at least the active
adapter's (evaluated on the same held-out images, with the same class list) minus
``promote_tolerance``; a negative tolerance demands that much improvement. With no held-out set
(fewer than ``holdout_min`` labeled tasks) there is nothing fair to compare on: the candidate,
trained on every annotation including the newest, is promoted, and its training-set scores are
recorded as such. Both metrics are stored in the version metadata either way; a candidate that
is not promoted is published inactive (an admin can still activate it). An active adapter built
on another base model (checkpoint or image size changed) is not comparable and is replaced.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from rq import get_current_job
from rq.job import Job

from training.data.dataset import SegmentationDataset, split_holdout
from training.jobs.scheduler import ProjectRun, TrainingScheduler
from training.labelstudio.export import ExportError, LabelStudioSource, export_dataset
from training.learn.config import TrainConfig
from training.learn.evaluation import evaluate
from training.learn.trainer import TrainProgress, train_adapter
from training.model.adapter import SamAdapter
from training.model.artifact import AdapterMismatchError
from training.model.config import AdapterConfig
from training.model.loading import load_adapter_model, new_adapter_model
from training.model.weights import BaseWeights, resolve_checkpoint
from training.registry import AdapterRegistry, RedisRegistry, open_registry

__all__ = ["JobProgress", "JobSettings", "run_training_job", "step_budget", "train_project"]

log = logging.getLogger(__name__)

# Environment variable -> JobSettings field (names shared with backend/settings.py).
ENV_NAMES = {
    "LABEL_STUDIO_URL": "label_studio_url",
    "LABEL_STUDIO_API_KEY": "label_studio_api_key",
    "SAM_MODEL": "model_type",
    "SAM_CHECKPOINT": "checkpoint",
    "SAM_IMAGE_SIZE": "image_size",
    "SAMLOOP_DATA_DIR": "data_dir",
    "SAMLOOP_MODEL_CACHE": "model_cache",
    "SAMLOOP_REDIS_PREFIX": "redis_prefix",
    "SAMLOOP_KEEP_VERSIONS": "keep_versions",
    "SAMLOOP_REGISTRY": "registry",
    "DEVICE": "device",
    "PRECISION": "precision",
    "TRAIN_MAX_SECONDS": "train_max_seconds",
    "TRAIN_MIN_ANNOTATIONS": "min_annotations",
    "TRAIN_PROMOTE_TOLERANCE": "promote_tolerance",
}


@dataclass
class JobSettings:
    """Everything a training job needs; JSON-safe (``to_dict`` / ``from_dict``).

    registry: ``""`` = a local directory ``<data_dir>/adapters``; ``"redis"`` = the Redis the job
        came from (prefix ``redis_prefix``; for workers without a shared disk); a path or a
        redis:// URL = ``open_registry(registry)``.
    Step budget: ``steps_per_image`` x training images, clamped to [min_steps, max_steps]; the
        wall-clock budget ``train_max_seconds`` applies too, whichever ends first.
    """

    label_studio_url: str = ""
    label_studio_api_key: str = ""
    model_type: str = "vit_t"
    checkpoint: str = ""
    image_size: int = 1024
    data_dir: str = "./data"
    model_cache: str = ""
    registry: str = ""
    redis_prefix: str = "samloop"
    keep_versions: int = 10
    device: str = "auto"
    precision: str = "auto"
    train_max_seconds: float = 600.0
    steps_per_image: int = 25
    min_steps: int = 50
    max_steps: int = 500
    batch_size: int = 4
    train_options: dict[str, Any] = field(default_factory=dict)
    adapter_options: dict[str, Any] = field(default_factory=dict)
    promote_tolerance: float = 0.01
    holdout_every: int = 5
    holdout_min: int = 5
    min_annotations: int = 1
    export_max_side: int = 2048
    debounce_seconds: float = 5.0
    max_debounce_seconds: float = 60.0
    lock_ttl_seconds: float = 60.0
    ls_retries: int = 3
    ls_backoff: float = 2.0

    def __post_init__(self) -> None:
        ints = {"image_size": 64, "keep_versions": 1, "steps_per_image": 1, "min_steps": 1, "max_steps": 1,
                "batch_size": 1, "holdout_every": 2, "holdout_min": 0, "min_annotations": 0,
                "export_max_side": 16, "ls_retries": 0}
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                value = int(value)
                setattr(self, name, value)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.promote_tolerance = float(self.promote_tolerance)
        if not -1.0 <= self.promote_tolerance <= 1.0:
            raise ValueError(f"promote_tolerance must be within [-1, 1], got {self.promote_tolerance!r}")
        for name in ("train_max_seconds", "debounce_seconds", "max_debounce_seconds",
                     "lock_ttl_seconds", "ls_backoff"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
            setattr(self, name, value)
        if self.image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16, got {self.image_size}")
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) must not exceed max_steps ({self.max_steps})")
        if self.train_max_seconds <= 0 or self.lock_ttl_seconds < 5:
            raise ValueError(f"train_max_seconds must be > 0 and lock_ttl_seconds >= 5, got "
                             f"{self.train_max_seconds}, {self.lock_ttl_seconds}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        TrainConfig.from_dict({**self.train_options, "max_steps": 1})  # fail here, not after the export
        AdapterConfig.from_dict(self.adapter_options)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown job setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in data.items() if v is not None})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> JobSettings:
        """Settings from environment variables (see ``ENV_NAMES``), then ``overrides``."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for env_name, name in ENV_NAMES.items():
            raw = environ.get(env_name)
            if raw is None or raw == "":
                continue
            kind = {f.name: f.type for f in fields(cls)}[name]
            values[name] = float(raw) if kind == "float" else int(raw) if kind == "int" else raw
        return cls.from_dict({**values, **overrides})

    @classmethod
    def resolve(cls, settings: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> JobSettings:
        """The job's settings: this process's environment, overridden by every non-empty entry of
        ``settings`` (so a worker supplies what the enqueuing side left out, e.g. the API key)."""
        given = {k: v for k, v in settings.items() if v is not None and v != ""}
        cls.from_dict(given)  # name unknown keys before mixing in the environment
        return cls.from_env(environ, **given)

    def job_timeout(self) -> int:
        """rq timeout: debounce + the training budget + room for export, model load, two evaluations."""
        return int(self.max_debounce_seconds + self.train_max_seconds * 1.25 + 900)


def step_budget(train_images: int, settings: JobSettings) -> int:
    """The step cap for a dataset: more annotations may use more steps, within [min, max]."""
    return max(settings.min_steps, min(settings.max_steps, settings.steps_per_image * train_images))


def _device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


class JobProgress:
    """Progress in ``job.meta`` (stage, step, loss, ETA) and in the log, in plain words."""

    def __init__(self, job: Job | None, project: str, min_interval: float = 1.0, log_interval: float = 30.0) -> None:
        self.job = job
        self.project = project
        self.min_interval = min_interval
        self.log_interval = log_interval
        self._saved = 0.0
        self._logged = 0.0

    def stage(self, stage: str, message: str, **fields_: Any) -> None:
        log.info("project %s: %s", self.project, message)
        self._save({"stage": stage, "message": message, **fields_})

    def on_train(self, progress: TrainProgress) -> None:
        now = time.monotonic()
        last = progress.step == progress.max_steps
        if now - self._logged >= self.log_interval or last:
            self._logged = now
            log.info("project %s: training step %d of at most %d, loss %.4f, about %.0f s left", self.project,
                     progress.step, progress.max_steps, progress.loss, progress.eta_seconds)
        if now - self._saved >= self.min_interval or last:
            self._save({"stage": "training", "step": progress.step, "max_steps": progress.max_steps,
                        "loss": round(progress.loss, 5), "elapsed": round(progress.elapsed, 1),
                        "eta_seconds": round(progress.eta_seconds, 1),
                        "message": f"training, step {progress.step}"})

    def _save(self, values: dict[str, Any]) -> None:
        self._saved = time.monotonic()
        if self.job is None:
            return
        self.job.meta.update(values, updated_at=time.time())
        self.job.save_meta()


# ----- pieces ----------------------------------------------------------------------------------------


def open_job_registry(settings: JobSettings, job: Job | None) -> AdapterRegistry:
    cache = Path(settings.data_dir) / "adapter-cache"
    if settings.registry == "redis":
        if job is None:
            raise ValueError("registry 'redis' means the job's own Redis; give a redis:// URL outside rq")
        return RedisRegistry(job.connection, prefix=settings.redis_prefix, keep_last=settings.keep_versions,
                             cache_dir=cache)
    spec = settings.registry or str(Path(settings.data_dir) / "adapters")
    return open_registry(spec, keep_last=settings.keep_versions, prefix=settings.redis_prefix, cache_dir=cache)


def load_active(registry: AdapterRegistry, project: str, weights: BaseWeights, settings: JobSettings
                ) -> tuple[int | None, SamAdapter | None, str]:
    """The project's active adapter rebuilt on this base: (version, model or None, what happened).

    The model is None when there is no active version or it was trained on another base model
    (other checkpoint or image size): the backend cannot use it either, so it is not compared.
    """
    info = registry.active(project)
    if info is None:
        return None, None, "no active adapter yet"
    info, data = registry.load(project, info.version)
    try:
        return info.version, load_adapter_model(data, weights, settings.image_size), f"active version {info.version}"
    except AdapterMismatchError as exc:
        return info.version, None, f"active version {info.version} does not fit this base model ({exc})"


def initial_model(active: SamAdapter | None, active_version: int | None, weights: BaseWeights,
                  settings: JobSettings, class_names: list[str]) -> tuple[SamAdapter, bool, str]:
    """The model to train: the active adapter itself when its adapter configuration is the one
    wanted (warm start; new classes get fresh prompts), else a fresh adapter.

    Returns (model with ``class_names``, warm-started?, why).
    """
    wanted = AdapterConfig.from_dict(settings.adapter_options)
    if active is not None and (not settings.adapter_options or active.config == wanted):
        new = [n for n in class_names if n not in active.class_names]
        active.set_classes(class_names)
        return active, True, f"warm start from version {active_version}" + (f", new classes {new}" if new else "")
    why = "no usable active adapter" if active is None else "the adapter configuration changed"
    return new_adapter_model(weights, settings.image_size, class_names, wanted), False, f"{why}: training from scratch"


def _brief(dataset: SegmentationDataset) -> dict[str, Any]:
    summary = dataset.describe()
    return {"images": summary["num_images"], "classes": summary["classes"]}


def _decide(candidate: dict, active: dict | None, tolerance: float, has_holdout: bool,
            active_version: int | None) -> tuple[bool, str]:
    if active is None:
        return True, "no comparable active adapter: the candidate is promoted"
    if not has_holdout:
        return True, "no held-out tasks yet: the candidate, trained on every annotation, is promoted"
    margin = candidate["mean_iou"] - active["mean_iou"]
    if margin >= -tolerance:
        return True, (f"held-out mean IoU {candidate['mean_iou']:.4f} vs the active version's "
                      f"{active['mean_iou']:.4f} (tolerance {tolerance}): promoted")
    return False, (f"held-out mean IoU {candidate['mean_iou']:.4f} vs the active version's {active['mean_iou']:.4f} "
                   f"(tolerance {tolerance}): not promoted, version {active_version} stays active")


# ----- the pipeline ------------------------------------------------------------------------------------


def train_project(project: str, settings: JobSettings, progress: JobProgress | None = None,
                  job: Job | None = None) -> dict[str, Any]:
    """Export, train, evaluate and publish one project's adapter. Returns a JSON-safe outcome.

    ``status``: ``promoted``, ``not_promoted`` (published inactive) or ``skipped`` (nothing to
    train on; ``reason`` says why). Raises on Label Studio / storage failures (rq retries).
    """
    progress = progress or JobProgress(None, project)
    started = time.time()
    if not settings.label_studio_url or not settings.label_studio_api_key:
        raise ValueError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must be set (in the job settings or the "
                         "worker's environment) to export annotations")
    source = LabelStudioSource(settings.label_studio_url, settings.label_studio_api_key,
                               retries=settings.ls_retries, backoff=settings.ls_backoff)
    progress.stage("exporting", f"exporting labeled tasks from {settings.label_studio_url}")
    try:
        export = export_dataset(source, project, Path(settings.data_dir) / "training-images",
                                max_side=max(settings.export_max_side, settings.image_size))
    except ExportError as exc:
        progress.stage("skipped", f"not training: {exc}")
        return {"status": "skipped", "project": project, "reason": str(exc)}
    dataset = export.dataset
    needed = max(1, settings.min_annotations)
    if len(dataset) < needed:
        reason = f"{len(dataset)} usable labeled tasks, fewer than TRAIN_MIN_ANNOTATIONS={needed}"
        progress.stage("skipped", f"not training: {reason}", skipped_tasks=export.skipped)
        return {"status": "skipped", "project": project, "reason": reason, "export": export.summary()}
    train_set, holdout = split_holdout(dataset, every=settings.holdout_every, min_size=settings.holdout_min)
    progress.stage("loading", f"{len(train_set)} training and {len(holdout)} held-out tasks "
                   f"({len(export.skipped)} skipped); loading the {settings.model_type} model",
                   tasks=len(dataset), skipped_tasks=export.skipped)

    weights = resolve_checkpoint(settings.model_type, settings.checkpoint, settings.model_cache or None)
    registry = open_job_registry(settings, job)
    device = _device(settings.device)
    active_version, active, active_note = load_active(registry, project, weights, settings)
    log.info("project %s: %s", project, active_note)
    active_metrics = None
    if active is not None and len(holdout):
        # Same held-out images and class list as the candidate; classes it never learned score 0.
        active.set_classes(dataset.class_names)
        active.to(device)
        progress.stage("evaluating", f"scoring the active version {active_version} on {len(holdout)} held-out tasks")
        active_metrics = evaluate(active, holdout, settings.precision)
    model, warm, start_reason = initial_model(active, active_version, weights, settings, dataset.class_names)
    del active  # a separate fresh model was built: let the old one go before training
    model.to(device)
    log.info("project %s: %s", project, start_reason)

    config = TrainConfig.from_dict({
        "batch_size": settings.batch_size, "precision": settings.precision, **settings.train_options,
        "max_steps": step_budget(len(train_set), settings), "max_seconds": settings.train_max_seconds,
    })
    progress.stage("training", f"training for up to {config.max_steps} steps / {config.max_seconds:.0f} s",
                   step=0, max_steps=config.max_steps)
    result = train_adapter(model, train_set, config, progress=progress.on_train)

    evaluated_on = "holdout" if len(holdout) else "training set (no held-out tasks)"
    progress.stage("evaluating", f"scoring the candidate on the {evaluated_on}")
    candidate_metrics = evaluate(model, holdout if len(holdout) else train_set, settings.precision)
    promote, decision = _decide(candidate_metrics, active_metrics, settings.promote_tolerance, len(holdout) > 0,
                                active_version)
    job_id = job.id if job is not None else None
    metadata = {
        "project": project,
        "trained_at": time.time(),
        "job_id": job_id,
        "base": model.base.to_dict(),
        "class_names": list(model.class_names),
        "warm_start_from": active_version if warm else None,
        "start": start_reason,
        "data": {"train": _brief(train_set), "holdout": _brief(holdout), "task_ids": export.task_ids,
                 "skipped": export.skipped},
        "train": result.to_dict(),
        "train_config": config.to_dict(),
        "metrics": {"evaluated_on": evaluated_on, "candidate": candidate_metrics, "active": active_metrics,
                    "active_version": active_version, "tolerance": settings.promote_tolerance},
        "promoted": promote,
        "decision": decision,
    }
    progress.stage("publishing", f"publishing: {decision}")
    artifact = model.to_bytes({"training": {"project": project, "job_id": job_id, "promoted": promote}})
    info = registry.publish(project, artifact, metadata, activate=promote)
    outcome = {
        "status": "promoted" if promote else "not_promoted",
        "project": project,
        "version": info.version,
        "active_version": info.version if promote else registry.active_version(project),
        "decision": decision,
        "metrics": metadata["metrics"],
        "train": metadata["train"],
        "export": export.summary(),
        "seconds": round(time.time() - started, 1),
    }
    progress.stage("done", f"version {info.version} published ({outcome['status']}) in {outcome['seconds']} s",
                   version=info.version, promoted=promote)
    return outcome


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
    try:
        with run.holding():
            outcome = train_project(project, resolved, progress, job)
    except Exception as exc:
        progress.stage("failed", f"training failed: {type(exc).__name__}: {exc}; the active adapter is unchanged")
        raise
    run.finish(outcome, TrainingScheduler.from_job(job))
    return outcome
