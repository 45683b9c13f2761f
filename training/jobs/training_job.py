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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rq import get_current_job
from rq.job import Job

from training.data.dataset import SegmentationDataset, split_holdout
from training.inference.embedding_store import MB, EmbeddingStore
from training.inference.predictor import ImageEmbedding
from training.inference.runtime import resolve_device
from training.jobs.progress import JobProgress
from training.jobs.project_run import ProjectRun
from training.jobs.scheduler import TrainingScheduler
from training.jobs.settings import JobSettings, step_budget
from training.labelstudio.client import LabelStudioSource
from training.labelstudio.export import ExportResult, export_dataset
from training.labelstudio.label_config import LabelConfigError
from training.learn.click_gate import click_gate
from training.learn.config import TrainConfig
from training.learn.embeddings import TrainingEmbeddings
from training.learn.evaluation import evaluate
from training.learn.trainer import TrainResult, train_adapter
from training.model.adapter import SamAdapter
from training.model.artifact import AdapterMismatchError
from training.model.config import AdapterConfig
from training.model.loading import load_adapter_model, new_adapter_model
from training.model.weights import BaseWeights, resolve_checkpoint
from training.registry import AdapterRegistry, RedisRegistry, open_registry

__all__ = ["run_training_job", "train_project"]

log = logging.getLogger(__name__)


@dataclass
class _Data:
    """The exported tasks and their deterministic train / held-out split."""

    export: ExportResult
    train_set: SegmentationDataset
    holdout: SegmentationDataset

    @property
    def dataset(self) -> SegmentationDataset:
        return self.export.dataset


@dataclass
class _Active:
    """The project's active adapter as this run sees it; ``model`` is None when it cannot be compared."""

    version: int | None
    model: SamAdapter | None
    metrics: dict | None


@dataclass
class _Verdict:
    evaluated_on: str
    candidate: dict
    promote: bool
    decision: str
    clicks: dict  # click_gate's choice of decoder for clicks, with both decoders' click metrics


def stored_embeddings(model: SamAdapter, store: EmbeddingStore, settings: JobSettings) -> TrainingEmbeddings | None:
    """Embeddings from the shared store for a frozen-encoder model; None for one with its own encoder."""
    return TrainingEmbeddings(model, store, settings.precision) if model.config.encoder == "frozen" else None


def _embedded(source: TrainingEmbeddings | None, dataset: SegmentationDataset) -> list[ImageEmbedding] | None:
    return None if source is None else [source.get(sample.image) for sample in dataset.samples]


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
    wanted = AdapterConfig.for_kind(settings.adapter_kind, **settings.adapter_options)
    # Without explicit options any adapter of the wanted kind warm-starts; a change of kind starts afresh.
    same = active is not None and (active.config == wanted or (not settings.adapter_options
                                                               and active.config.kind == wanted.kind))
    if same:
        new = [n for n in class_names if n not in active.class_names]
        active.set_classes(class_names)
        return active, True, f"warm start from version {active_version}" + (f", new classes {new}" if new else "")
    why = "no usable active adapter" if active is None else f"the adapter configuration changed ({wanted.kind} kind)"
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


# ----- the stages ------------------------------------------------------------------------------------


def export_tasks(project: str, settings: JobSettings, progress: JobProgress) -> _Data | dict[str, Any]:
    """Export the labeled tasks and split them; the ``skipped`` outcome when there is nothing to train on."""
    if not settings.label_studio_url or not settings.label_studio_api_key:
        raise ValueError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must be set (in the job settings or the "
                         "worker's environment) to export annotations")
    source = LabelStudioSource(settings.label_studio_url, settings.label_studio_api_key,
                               retries=settings.ls_retries, backoff=settings.ls_backoff)
    progress.stage("exporting", f"exporting labeled tasks from {settings.label_studio_url}")
    try:
        export = export_dataset(source, project, Path(settings.data_dir) / "training-images",
                                max_side=max(settings.export_max_side, settings.image_size))
    except LabelConfigError as exc:
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
    return _Data(export, train_set, holdout)


def score_active(registry: AdapterRegistry, project: str, weights: BaseWeights, settings: JobSettings,
                 data: _Data, device: torch.device, store: EmbeddingStore, progress: JobProgress) -> _Active:
    """Load the active adapter and score it on the held-out tasks (when there are both)."""
    version, active, note = load_active(registry, project, weights, settings)
    log.info("project %s: %s", project, note)
    metrics = None
    if active is not None and len(data.holdout):
        # Same held-out images and class list as the candidate; classes it never learned score 0.
        active.set_classes(data.dataset.class_names)
        active.to(device)
        progress.stage("evaluating", f"scoring the active version {version} on {len(data.holdout)} held-out tasks")
        embeddings = _embedded(stored_embeddings(active, store, settings), data.holdout)
        metrics = evaluate(active, data.holdout, settings.precision, embeddings)
    return _Active(version, active, metrics)


def train_candidate(model: SamAdapter, data: _Data, settings: JobSettings, store: EmbeddingStore,
                    progress: JobProgress) -> tuple[TrainConfig, TrainResult]:
    """Train ``model`` in place within the step and time budgets; returns the options used and the result.

    A frozen-encoder model trains on stored embeddings: the images are encoded first (those the
    backend or an earlier run stored cost nothing), then the loop runs on the decoder alone."""
    config = TrainConfig.from_dict({
        "batch_size": settings.batch_size, "precision": settings.precision, **settings.train_options,
        "max_steps": step_budget(len(data.train_set), settings), "max_seconds": settings.train_max_seconds,
    })
    embeddings = stored_embeddings(model, store, settings)
    if embeddings is not None:
        progress.stage("encoding", f"embedding {len(data.train_set)} training images (stored embeddings are reused)")

    def started() -> None:
        progress.stage("training", f"training for up to {config.max_steps} steps / {config.max_seconds:.0f} s",
                       step=0, max_steps=config.max_steps, encoded=embeddings.encoded if embeddings else None)

    return config, train_adapter(model, data.train_set, config, progress=progress.on_train, embeddings=embeddings,
                                 on_ready=started)


def judge_candidate(model: SamAdapter, data: _Data, active: _Active, settings: JobSettings, store: EmbeddingStore,
                    progress: JobProgress) -> _Verdict:
    """Score the candidate (held-out tasks, else the training set), decide whether it is promoted, and
    which decoder answers its clicks (simulated clicks on the held-out tasks)."""
    has_holdout = len(data.holdout) > 0
    evaluated_on = "holdout" if has_holdout else "training set (no held-out tasks)"
    progress.stage("evaluating", f"scoring the candidate on the {evaluated_on}")
    scored = data.holdout if has_holdout else data.train_set
    source = stored_embeddings(model, store, settings)
    embeddings = _embedded(source, scored)
    candidate = evaluate(model, scored, settings.precision, embeddings)
    promote, decision = _decide(candidate, active.metrics, settings.promote_tolerance, has_holdout, active.version)
    clicks = click_gate(model, data.holdout, settings.precision, embeddings if has_holdout else None,
                        settings.click_max_clicks)
    log.info("clicks: %s decoder (%s)", clicks["decoder"], clicks["reason"])
    return _Verdict(evaluated_on, candidate, promote, decision, clicks)


def _metadata(project: str, job_id: str | None, model: SamAdapter, start: tuple[bool, str], data: _Data,
              trained: tuple[TrainConfig, TrainResult], active: _Active, verdict: _Verdict,
              settings: JobSettings) -> dict[str, Any]:
    """What the registry keeps with the version: provenance, data, training and the decision."""
    warm, start_reason = start
    config, result = trained
    return {
        "project": project,
        "trained_at": time.time(),
        "job_id": job_id,
        "base": model.base.to_dict(),
        "class_names": list(model.class_names),
        "warm_start_from": active.version if warm else None,
        "start": start_reason,
        "data": {"train": _brief(data.train_set), "holdout": _brief(data.holdout), "task_ids": data.export.task_ids,
                 "skipped": data.export.skipped},
        "train": result.to_dict(),
        "train_config": config.to_dict(),
        "metrics": {"evaluated_on": verdict.evaluated_on, "candidate": verdict.candidate, "active": active.metrics,
                    "active_version": active.version, "tolerance": settings.promote_tolerance,
                    "clicks": verdict.clicks},
        "promoted": verdict.promote,
        "decision": verdict.decision,
    }


def publish_candidate(registry: AdapterRegistry, project: str, model: SamAdapter, metadata: dict[str, Any],
                      data: _Data, started: float, progress: JobProgress) -> dict[str, Any]:
    """Publish the candidate (active if promoted) and return the job's outcome."""
    promote, decision = metadata["promoted"], metadata["decision"]
    progress.stage("publishing", f"publishing: {decision}")
    clicks_decoder = metadata["metrics"]["clicks"]["decoder"]
    artifact = model.to_bytes({"training": {"project": project, "job_id": metadata["job_id"], "promoted": promote},
                               "clicks_decoder": clicks_decoder})
    info = registry.publish(project, artifact, metadata, activate=promote)
    outcome = {
        "status": "promoted" if promote else "not_promoted",
        "project": project,
        "version": info.version,
        "active_version": info.version if promote else registry.active_version(project),
        "decision": decision,
        "metrics": metadata["metrics"],
        "train": metadata["train"],
        "export": data.export.summary(),
        "seconds": round(time.time() - started, 1),
    }
    progress.stage("done", f"version {info.version} published ({outcome['status']}) in {outcome['seconds']} s",
                   version=info.version, promoted=promote)
    return outcome


# ----- the pipeline ------------------------------------------------------------------------------------


def train_project(project: str, settings: JobSettings, progress: JobProgress | None = None,
                  job: Job | None = None) -> dict[str, Any]:
    """Export, train, evaluate and publish one project's adapter. Returns a JSON-safe outcome.

    ``status``: ``promoted``, ``not_promoted`` (published inactive) or ``skipped`` (nothing to
    train on; ``reason`` says why). Raises on Label Studio / storage failures (rq retries).
    """
    progress = progress or JobProgress(None, project)
    started = time.time()
    data = export_tasks(project, settings, progress)
    if isinstance(data, dict):
        return data
    weights = resolve_checkpoint(settings.model_type, settings.checkpoint, settings.model_cache or None)
    registry = open_job_registry(settings, job)
    device = resolve_device(settings.device)
    store = EmbeddingStore(Path(settings.data_dir) / "embeddings", settings.embedding_store_mb * MB)
    active = score_active(registry, project, weights, settings, data, device, store, progress)
    model, warm, start_reason = initial_model(active.model, active.version, weights, settings,
                                              data.dataset.class_names)
    active.model = None  # a separate fresh model was built: let the old one go before training
    model.to(device)
    log.info("project %s: %s", project, start_reason)
    trained = train_candidate(model, data, settings, store, progress)
    verdict = judge_candidate(model, data, active, settings, store, progress)
    metadata = _metadata(project, job.id if job is not None else None, model, (warm, start_reason), data, trained,
                         active, verdict, settings)
    return publish_candidate(registry, project, model, metadata, data, started, progress)


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
