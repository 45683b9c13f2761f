"""What the admin console shows per project, read from the one source of truth (Redis, the registry).

Every backend process answers the same: switches come from ``ProjectSettingsStore`` (Redis), versions
and the active pointer from the adapter registry, jobs and the last run from the training keys and
rq's job hashes. Nothing here is cached in the process; only the pre-encoding progress is this
process's own (its pre-encoder's, read directly).
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from backend.errors import registry_access
from backend.project_settings import ProjectSettings
from backend.services import Services
from backend.versioning import model_version
from training.jobs.scheduler import TrainingScheduler
from training.labelstudio.label_config import LabelConfigError, parse_label_config
from training.labelstudio.projects import created_of, project_number
from training.registry import VersionInfo
from training.registry.base import project_sort_key

__all__ = ["all_projects", "control_of", "project_summary", "switch_schema"]

log = logging.getLogger(__name__)


def switch_schema() -> dict[str, Any]:
    """The switches as JSON schema properties (type, enum, default): the page draws its controls from
    this, so a switch added to ``ProjectSettings`` shows up without touching the console."""
    return ProjectSettings.model_json_schema()["properties"]


def control_of(services: Services) -> TrainingScheduler | None:
    """The rq scheduler when this backend has one (tests may run with a recording stand-in)."""
    return services.scheduler if isinstance(services.scheduler, TrainingScheduler) else None


def all_projects(services: Services) -> list[str]:
    """Projects with adapter versions or settings, by Label Studio id ("3" before "3.1712345678" before "10")."""
    with registry_access():
        known = set(services.registry.projects())
    known |= set(services.store.projects())
    return sorted(known, key=project_sort_key)


def _classes(services: Services, project: str) -> list[str]:
    config = services.store.label_config(project)
    if not config:
        return []
    try:
        return list(parse_label_config(config).labels)
    except LabelConfigError:
        return []


def version_row(services: Services, info: VersionInfo, pinned: int | None) -> dict[str, Any]:
    """One line of the versions table: identity, held-out scores (masks and clicks), training."""
    meta = info.metadata
    metrics = meta.get("metrics") or {}
    candidate = metrics.get("candidate") or {}
    clicks = metrics.get("clicks") or {}
    train = meta.get("train") or {}
    return {
        "version": info.version,
        "model_version": model_version(services.models.base, info.project, info.version),
        "created": info.created,
        "active": info.active,
        "pinned": info.version == pinned,
        "classes": meta.get("class_names"),
        "evaluated_on": metrics.get("evaluated_on"),
        "mean_iou": candidate.get("mean_iou"),
        "mean_dice": candidate.get("mean_dice"),
        "noc90": (clicks.get("candidate") or {}).get("noc90"),
        "base_noc90": (clicks.get("base") or {}).get("noc90"),
        "clicks_decoder": clicks.get("decoder"),
        "promoted": meta.get("promoted"),
        "decision": meta.get("decision"),
        "train_seconds": train.get("seconds"),
        "steps": train.get("steps"),
        "final_loss": train.get("final_loss"),
    }


def last_run(control: TrainingScheduler | None, project: str) -> dict[str, Any] | None:
    """The last run: when, how long, the candidate's and the active version's held-out scores, the
    outcome, and its loss curve (from its job's progress, while rq keeps the job)."""
    if control is None:
        return None
    run = control.status(project).get("last_run")
    if not run:
        return None
    metrics = run.get("metrics") or {}
    clicks = metrics.get("clicks") or {}
    meta = control.job_meta(run["job_id"]) if run.get("job_id") else None
    return {
        "status": run.get("status"),
        "finished_at": run.get("finished_at"),
        "seconds": run.get("seconds"),
        "version": run.get("version"),
        "active_version": run.get("active_version"),
        "reason": run.get("decision") or run.get("reason") or run.get("error"),
        "evaluated_on": metrics.get("evaluated_on"),
        "candidate": _scores(metrics.get("candidate"), clicks.get("candidate")),
        "active": _scores(metrics.get("active"), clicks.get("base")),
        "losses": (meta or {}).get("losses") or [],
        "job_id": run.get("job_id"),
    }


def _scores(masks: dict | None, clicks: dict | None) -> dict[str, Any] | None:
    if not masks and not clicks:
        return None
    return {"mean_iou": (masks or {}).get("mean_iou"), "noc90": (clicks or {}).get("noc90")}


def current_job(control: TrainingScheduler | None, project: str) -> dict[str, Any] | None:
    """The running (else waiting) job: rq status, stage, step, loss, ETA and the loss curve so far."""
    if control is None:
        return None
    job = control.current_job(project)
    if job is None:
        return None
    keep = ("job_id", "status", "stage", "message", "step", "max_steps", "loss", "eta_seconds", "elapsed",
            "trigger", "enqueued_at", "started_at", "updated_at", "losses")
    return {key: job.get(key) for key in keep}


def project_summary(services: Services, project: str) -> dict[str, Any]:
    """Everything the console shows about one project (JSON-safe)."""
    settings = services.store.get(project)
    with registry_access():
        infos = services.registry.versions(project)
    active = next((info.version for info in infos if info.active), None)
    choice = services.models.choose(project, settings.pinned_version)
    served = next((info for info in infos if info.version == choice.version), None)
    control = control_of(services)
    try:
        run, job = last_run(control, project), current_job(control, project)
    except redis.RedisError as exc:  # the registry (maybe on disk) still answers: show what is known
        log.warning("project %s: training status unavailable: %s", project, exc)
        run, job = None, {"status": "unknown", "message": f"training status unavailable: Redis unreachable ({exc})"}
    return {
        "id": project,
        "label_studio_id": project_number(project),
        # When Label Studio created the project (None: stored under a bare id, before keys named the instance).
        "created": created_of(project),
        "model_version": choice.model_version,
        "served_version": choice.version,
        "switches": settings.model_dump(),
        "classes": _classes(services, project),
        "adapter_classes": (served.metadata.get("class_names") if served else None) or [],
        "active_version": active,
        "pinned_version": settings.pinned_version,
        "versions": [version_row(services, info, settings.pinned_version) for info in infos],
        "last_run": run,
        "job": job,
        "training_connected": control is not None,
        "preencode_progress": services.preencoder.progress(project),
    }
