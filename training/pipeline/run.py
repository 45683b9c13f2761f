"""``run_project``: one training run of a project, what the rq job and the CLI both call.

1. Sync: the task cache is brought up to date (``training.labelstudio.incremental``): only tasks that
   changed are fetched. The CLI's tasks come from a dataset on disk instead (``local_dataset``).
2. Split: the held-out set stays as the last version left it, and grows from new tasks up to its cap.
3. Start: a warm start from the active version (its configuration unchanged, no full retrain asked for),
   else a fresh adapter. Nothing new or removed since the active version: no run.
4. Train: incremental (a fixed budget, new tasks in every batch) after a warm start, else full.
5. Judge: the candidate is scored on every held-out task; the active version's scores are read back from
   its metadata (computed only for held-out tasks it was never scored on); the mask gate
   (``scores.MaskGate``) decides promotion and the click gate (``click_check``) the decoder for clicks.
6. Publish: the version, active if promoted, with the state the next run reads (``history``).

Failure never loses anything: the registry publishes atomically, so a crash, kill or timeout before
publishing leaves the active adapter and the version list as they were.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.inference.embedding_store import MB, EmbeddingStore
from training.inference.runtime import resolve_device
from training.labelstudio.client import LabelStudioSource
from training.labelstudio.incremental import SyncResult, sync_project
from training.labelstudio.label_config import LabelConfigError
from training.learn.config import TrainConfig
from training.learn.embeddings import TrainingEmbeddings
from training.learn.trainer import TrainResult, train_adapter
from training.model.weights import resolve_checkpoint
from training.pipeline.click_check import click_objects, gate_clicks, unchecked_clicks
from training.pipeline.history import History
from training.pipeline.holdout import HoldoutPolicy, Split, assign_holdout
from training.pipeline.models import BaseModels
from training.pipeline.scores import MaskGate, TaskScore, summarize_scores
from training.pipeline.settings import JobSettings
from training.pipeline.stages import (
    Progress,
    StepPlan,
    embedding_source,
    initial_model,
    load_active,
    plan_steps,
    score_tasks,
)
from training.pipeline.training_set import CachedTrainingSet
from training.registry import AdapterRegistry

__all__ = ["RunServices", "run_project"]

log = logging.getLogger(__name__)

# Prepared samples a run keeps in memory (a 1024 px embedding is 4 MB): bounds the worker's size. A small
# project's tasks all fit; a large one's are read from the embedding store again, a few ms each.
PREPARED_SAMPLES = 32


@dataclass
class RunServices:
    """What a run uses besides the project and its settings.

    ``sync``: where the labeled tasks come from; by default Label Studio (``sync_stage``), the CLI passes
    a local dataset's (``training.pipeline.local_dataset``). It returns the synced tasks, or the outcome
    of a run that has nothing to train on.
    """

    registry: AdapterRegistry
    progress: Progress
    models: BaseModels = field(default_factory=BaseModels)
    job_id: str | None = None
    full: bool = False  # retrain from scratch, even where a warm start is possible
    sync: Callable[[str, JobSettings, Progress], SyncResult | dict[str, Any]] | None = None


def sync_stage(project: str, settings: JobSettings, progress: Progress) -> SyncResult | dict[str, Any]:
    """Bring the task cache up to date; the ``skipped`` outcome when there is nothing to train on."""
    if not settings.label_studio_url or not settings.label_studio_api_key:
        raise ValueError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must be set (in the job settings or the "
                         "worker's environment) to export annotations")
    source = LabelStudioSource(settings.label_studio_url, settings.label_studio_api_key,
                               retries=settings.ls_retries, backoff=settings.ls_backoff)
    progress.stage("exporting", f"fetching changed tasks from {settings.label_studio_url}")
    data = Path(settings.data_dir)
    try:
        synced = sync_project(source, project, data / "task-cache", data / "training-images",
                              max_side=max(settings.export_max_side, settings.image_size))
    except LabelConfigError as exc:
        progress.stage("skipped", f"not training: {exc}")
        return {"status": "skipped", "project": project, "reason": str(exc)}
    needed = max(1, settings.min_annotations)
    if len(synced.cache.tasks) < needed:
        reason = f"{len(synced.cache.tasks)} usable labeled tasks, fewer than TRAIN_MIN_ANNOTATIONS={needed}"
        progress.stage("skipped", f"not training: {reason}", skipped_tasks=synced.skipped)
        return {"status": "skipped", "project": project, "reason": reason, "export": synced.summary()}
    return synced


def _split(synced: SyncResult, history: History, settings: JobSettings) -> Split:
    cache = synced.cache
    return assign_holdout(cache.tasks, {t: e.classes for t, e in cache.tasks.items()}, history.holdout_ids,
                          history.seen_ids, HoldoutPolicy(settings.holdout_every, settings.holdout_cap,
                                                          settings.holdout_min))


def _unchanged(synced: SyncResult, history: History, stamps: dict[int, str], settings: JobSettings) -> bool:
    """Nothing new, changed or removed since the active version was trained, the same classes, and the
    same base model (a version of another base, e.g. after SAM_MODEL changed, cannot serve this one)."""
    if not history.knows_its_data or history.active.get("class_names") != synced.class_names:
        return False
    base = history.active.get("base") or {}  # versions from before the base was recorded: assume the same
    if base and (base.get("model_type"), base.get("image_size")) != (settings.model_type, settings.image_size):
        return False
    trained = {int(t) for t in history.active["data"]["trained"]}
    held = set(history.holdout_ids)
    current = set(stamps)
    return not (set(history.new_since_active(stamps)) - held) and trained <= current and held <= current


@dataclass
class _Run:
    """One run's working state."""

    project: str
    settings: JobSettings
    services: RunServices
    synced: SyncResult
    history: History
    split: Split
    started: float = field(default_factory=time.time)
    active_scored: dict[str, int] = field(default_factory=dict)  # held-out scores read back / computed

    @property
    def cache(self):
        return self.synced.cache

    @property
    def stamps(self) -> dict[int, str]:
        return {t: e.stamp for t, e in self.cache.tasks.items()}


def run_project(project: str, settings: JobSettings, services: RunServices) -> dict[str, Any]:
    """Sync, train, judge and publish one project's adapter. Returns a JSON-safe outcome.

    ``status``: ``promoted``, ``not_promoted`` (published inactive), ``up_to_date`` (nothing changed since
    the active version) or ``skipped`` (nothing to train on; ``reason`` says why). Raises on Label Studio
    or storage failures (rq retries).
    """
    progress = services.progress
    synced = (services.sync or sync_stage)(project, settings, progress)
    if isinstance(synced, dict):
        return synced
    history = History.read(services.registry, project)
    run = _Run(project, settings, services, synced, history, _split(synced, history, settings))
    if not services.full and _unchanged(synced, history, run.stamps, settings):
        reason = f"nothing changed since version {history.active_version} was trained"
        progress.stage("up_to_date", reason)
        return {"status": "up_to_date", "project": project, "reason": reason, "export": synced.summary(),
                "active_version": history.active_version}
    return _train_and_publish(run)


def _train_and_publish(run: _Run) -> dict[str, Any]:
    settings, services, progress = run.settings, run.services, run.services.progress
    weights = resolve_checkpoint(settings.model_type, settings.checkpoint, settings.model_cache or None)
    device = resolve_device(settings.device)
    progress.stage("loading", f"{len(run.split.train)} training and {len(run.split.holdout)} held-out tasks "
                   f"({len(run.synced.skipped)} skipped); loading the {settings.model_type} model",
                   tasks=len(run.cache.tasks), skipped_tasks=run.synced.skipped)
    started = time.monotonic()
    version, active, note = load_active(services.registry, run.project, weights, settings.image_size, services.models)
    log.info("project %s: %s (%.2f s, %d base models built in this process)", run.project, note,
             time.monotonic() - started, services.models.built)
    model, warm, why = initial_model(active, version, weights, settings, run.cache.class_names, services.models,
                                     services.full)
    model.to(device)
    if active is not None:
        active.to(device)
    log.info("project %s: %s", run.project, why)
    store = EmbeddingStore(Path(settings.data_dir) / "embeddings", settings.embedding_store_mb * MB)
    embeddings = (TrainingEmbeddings(model, store, settings.precision, memo_entries=PREPARED_SAMPLES)
                  if model.config.keeps_base_embeddings else None)
    active_scores = _active_scores(run, active, embeddings) if active is not None else None
    active = None if warm else active  # the warm start trains it in place; else let it go before training
    plan = plan_steps(run.split.train, run.history.new_since_active(run.stamps), warm, run.history, settings,
                      TrainConfig().warmup_steps)
    trained = _train(run, model, plan, embeddings)
    return _judge_and_publish(run, model, (warm, why), version, active_scores, plan, trained, embeddings)


def _active_scores(run: _Run, active, embeddings: TrainingEmbeddings | None) -> dict[int, TaskScore]:
    """The active version's held-out scores: read back where it was scored on the same annotation, else
    computed now (tasks newly held out, or whose annotation changed)."""
    scores: dict[int, TaskScore] = {}
    missing = []
    for task in run.split.holdout:
        stored = run.history.active_score(task, run.cache.tasks[task].stamp)
        if stored is None:
            missing.append(task)
        else:
            scores[task] = stored
    if missing:
        run.services.progress.stage("evaluating", f"scoring the active version on {len(missing)} held-out tasks "
                                    f"it was not scored on ({len(scores)} read back)")
        active.set_classes(run.cache.class_names)
        source = embedding_source(run.cache, embeddings, active, run.settings.precision)
        scores.update(score_tasks(active, run.cache, missing, source, run.settings.precision))
    run.active_scored = {"read_back": len(scores) - len(missing), "computed": len(missing)}
    return scores


def _train(run: _Run, model, plan: StepPlan, embeddings: TrainingEmbeddings | None
           ) -> tuple[TrainConfig, TrainResult]:
    settings = run.settings
    config = TrainConfig.from_dict({
        "batch_size": settings.batch_size, "precision": settings.precision, "warmup_steps": plan.warmup,
        **settings.train_options, "max_steps": plan.steps, "max_seconds": settings.train_max_seconds,
    })
    dataset = CachedTrainingSet(run.cache, run.split.train)
    if embeddings is not None:  # a stage of its own for operators: a first run may encode many images
        run.services.progress.stage("encoding", f"embeddings of {len(dataset)} training tasks: read from the "
                                    "store, the missing ones encoded once as training first needs them")

    def started() -> None:
        run.services.progress.stage(
            "training", f"{plan.kind} run: up to {config.max_steps} steps / {config.max_seconds:.0f} s, "
            f"{len(plan.new)} new or changed tasks", step=0, max_steps=config.max_steps,
            encoded=embeddings.encoded if embeddings else None, plan=plan.to_dict())

    result = train_adapter(model, dataset, config, progress=run.services.progress.on_train, embeddings=embeddings,
                           on_ready=started, sampler=plan.sampler, max_prepared=PREPARED_SAMPLES)
    return config, result


def _judge_and_publish(run: _Run, model, start: tuple[bool, str], active_version: int | None,
                       active_scores: dict[int, TaskScore] | None, plan: StepPlan,
                       trained: tuple[TrainConfig, TrainResult], embeddings: TrainingEmbeddings | None
                       ) -> dict[str, Any]:
    settings, progress, classes = run.settings, run.services.progress, run.cache.class_names
    holdout = run.split.holdout
    scored = holdout or run.split.train[: settings.holdout_cap]
    evaluated_on = "holdout" if holdout else "training set (no held-out tasks)"
    progress.stage("evaluating", f"scoring the candidate on {len(scored)} tasks of the {evaluated_on}")
    source = embedding_source(run.cache, embeddings, model, settings.precision)
    candidate = score_tasks(model, run.cache, scored, source, settings.precision)
    masks = _mask_verdict(candidate, active_scores, holdout, classes, settings, active_version)
    clicks, base_traces = _click_verdict(run, model, masks["promote"], source)
    log.info("clicks: %s decoder (%s)", clicks["decoder"], clicks["reason"])
    metadata = {
        "project": run.project, "trained_at": time.time(), "job_id": run.services.job_id,
        "base": model.base.to_dict(), "class_names": list(model.class_names),
        "warm_start_from": active_version if start[0] else None, "start": start[1], "plan": plan.to_dict(),
        "data": {"train": {"images": len(run.split.train)}, "holdout": {"images": len(holdout)},
                 "task_ids": sorted(run.cache.tasks), "skipped": list(run.synced.skipped),
                 "trained": {str(t): run.cache.tasks[t].stamp for t in run.split.train},
                 "holdout_ids": list(holdout), "export": run.synced.summary()},
        "train": trained[1].to_dict(), "train_config": trained[0].to_dict(),
        "metrics": {"evaluated_on": evaluated_on, "candidate": summarize_scores(list(candidate.values()), classes),
                    "active": masks["active_summary"], "active_version": active_version,
                    "tolerance": settings.promote_tolerance, "gate": masks["gate"],
                    "active_scored": run.active_scored, "clicks": clicks},
        "evaluation": {"per_task": {str(t): s.to_dict() for t, s in candidate.items()} if holdout else {}},
        "clicks_base_traces": base_traces,
        "promoted": masks["promote"], "decision": masks["decision"],
    }
    return _publish(run, model, metadata)


def _click_verdict(run: _Run, model, promoted: bool, source) -> tuple[dict, dict]:
    """The click gate on a bounded sample of held-out objects; a candidate that is not promoted serves no
    clicks, so it is not clicked (that would only delay the run's end)."""
    settings = run.settings
    if not promoted:
        return unchecked_clicks(model, "not promoted: clicks not checked", run.history.base_traces)
    run.services.progress.stage("evaluating", f"clicking up to {settings.click_objects} held-out objects")
    objects = click_objects(run.cache, run.split.holdout, settings.click_objects)
    return gate_clicks(model, run.cache, objects, source, settings.precision, settings.click_max_clicks,
                       run.history.base_traces)


def _mask_verdict(candidate: dict[int, TaskScore], active: dict[int, TaskScore] | None, holdout: list[int],
                  classes: list[str], settings: JobSettings, active_version: int | None) -> dict[str, Any]:
    """Promotion: the mask gate on paired held-out scores, or promoted when there is nothing to compare."""
    if active is None:
        return {"promote": True, "gate": None, "active_summary": None,
                "decision": "no comparable active adapter: the candidate is promoted"}
    if not holdout:
        return {"promote": True, "gate": None, "active_summary": None,
                "decision": "no held-out tasks yet: the candidate, trained on every annotation, is promoted"}
    paired = [active[t] for t in holdout]
    gate = MaskGate(settings.promote_tolerance).decide([candidate[t] for t in holdout], paired, classes)
    verdict = (f"held-out mean IoU {gate['candidate']:.4f} vs the active version's {gate['active']:.4f} "
               f"on {len(holdout)} tasks (noise {gate['noise']:.4f}, allowed drop {gate['allowed']:.4f})")
    decision = (f"{verdict}: promoted" if gate["promote"]
                else f"{verdict}: not promoted, version {active_version} stays active")
    return {"promote": gate["promote"], "gate": gate, "active_summary": summarize_scores(paired, classes),
            "decision": decision}


def _publish(run: _Run, model, metadata: dict[str, Any]) -> dict[str, Any]:
    """Publish the candidate (active if promoted) and return the run's outcome."""
    promote, decision, progress = metadata["promoted"], metadata["decision"], run.services.progress
    progress.stage("publishing", f"publishing: {decision}")
    artifact = model.to_bytes({"training": {"project": run.project, "job_id": run.services.job_id,
                                            "promoted": promote},
                               "clicks_decoder": metadata["metrics"]["clicks"]["decoder"]})
    registry = run.services.registry
    info = registry.publish(run.project, artifact, metadata, activate=promote)
    outcome = {
        "status": "promoted" if promote else "not_promoted",
        "project": run.project,
        "version": info.version,
        "active_version": info.version if promote else registry.active_version(run.project),
        "decision": decision,
        "plan": metadata["plan"],
        "metrics": metadata["metrics"],
        "train": metadata["train"],
        "export": run.synced.summary(),
        "seconds": round(time.time() - run.started, 1),
    }
    progress.stage("done", f"version {info.version} published ({outcome['status']}) in {outcome['seconds']} s",
                   version=info.version, promoted=promote)
    return outcome
