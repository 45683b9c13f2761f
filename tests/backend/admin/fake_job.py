"""A stand-in training job for the admin tests: the real protocol (ProjectRun, JobProgress), fake work.

It claims the project like ``run_training_job``, reports ``steps`` training steps ``step_seconds``
apart through ``JobProgress`` (so the console sees stage, step, loss, ETA and the loss curve), then
publishes a version with held-out metrics shaped like the real job's and makes it active. No torch
work, so a worker runs it in seconds.
"""

from __future__ import annotations

import time

from rq import get_current_job

from training.jobs.progress import JobProgress
from training.jobs.project_run import ProjectRun
from training.jobs.scheduler import TrainingScheduler
from training.learn.trainer import TrainProgress
from training.registry import LocalRegistry


def fake_training_job(project: str, settings: dict) -> dict:
    job = get_current_job()
    progress = JobProgress(job, project, min_interval=0.0)
    run = ProjectRun(job.connection, settings["redis_prefix"], project, job.id, settings["debounce_seconds"],
                     settings["max_debounce_seconds"])
    progress.stage("debouncing", "waiting for the burst to settle")
    if not run.begin():
        return run.outcome
    started = time.time()
    registry = LocalRegistry(settings["registry_dir"])
    steps = int(settings.get("steps", 5))
    with run.holding():
        progress.stage("training", f"training for up to {steps} steps", step=0, max_steps=steps)
        for step in range(1, steps + 1):
            time.sleep(float(settings.get("step_seconds", 0.05)))
            progress.on_train(TrainProgress(step=step, max_steps=steps, loss=1.0 / step, elapsed=time.time() - started,
                                            eta_seconds=(steps - step) * float(settings.get("step_seconds", 0.05))))
        previous = registry.active_version(project)
        iou = 0.3 + 0.1 * len(registry.versions(project))
        metadata = {"class_names": ["cat", "dog"], "promoted": True, "decision": "promoted by the stand-in job",
                    "train": {"seconds": round(time.time() - started, 2), "steps": steps, "final_loss": 1.0 / steps},
                    "metrics": {"evaluated_on": "holdout", "candidate": {"mean_iou": iou}, "active": None,
                                "active_version": previous,
                                "clicks": {"decoder": "base", "candidate": {"noc90": 3.5}, "base": {"noc90": 4.0}}}}
        info = registry.publish(project, b"stand-in weights", metadata, activate=True)
    outcome = {"status": "promoted", "project": project, "version": info.version, "active_version": info.version,
               "decision": metadata["decision"], "metrics": metadata["metrics"], "train": metadata["train"],
               "seconds": round(time.time() - started, 1)}
    progress.stage("done", f"version {info.version} published")
    run.finish(outcome, TrainingScheduler.from_job(job))
    return outcome
