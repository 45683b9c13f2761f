"""``JobProgress``: a training job's progress in ``job.meta`` (for status queries) and in the log.

``meta["losses"]`` keeps the run's loss curve as ``[step, loss]`` pairs (thinned to at most
``MAX_CURVE_POINTS``), so the admin console can draw it while the job runs and after it ended.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rq.job import Job

from training.learn.trainer import TrainProgress

__all__ = ["JobProgress"]

log = logging.getLogger(__name__)

MAX_CURVE_POINTS = 400


class JobProgress:
    """Progress in ``job.meta`` (stage, step, loss, ETA) and in the log, in plain words."""

    def __init__(self, job: Job | None, project: str, min_interval: float = 1.0, log_interval: float = 30.0) -> None:
        self.job = job
        self.project = project
        self.min_interval = min_interval
        self.log_interval = log_interval
        self._saved = 0.0
        self._logged = 0.0
        self._curve: list[list[float]] = []

    def stage(self, stage: str, message: str, **fields_: Any) -> None:
        log.info("project %s: %s", self.project, message)
        self._save({"stage": stage, "message": message, **fields_})

    def on_train(self, progress: TrainProgress) -> None:
        self._curve.append([progress.step, round(progress.loss, 5)])
        if len(self._curve) > MAX_CURVE_POINTS:
            self._curve = self._curve[::2]  # every other point: the shape stays, the size is bounded
        now = time.monotonic()
        last = progress.step == progress.max_steps
        if now - self._logged >= self.log_interval or last:
            self._logged = now
            log.info("project %s: training step %d of at most %d, loss %.4f, about %.0f s left", self.project,
                     progress.step, progress.max_steps, progress.loss, progress.eta_seconds)
        if now - self._saved >= self.min_interval or last:
            self._save({"stage": "training", "step": progress.step, "max_steps": progress.max_steps,
                        "loss": round(progress.loss, 5), "elapsed": round(progress.elapsed, 1),
                        "eta_seconds": round(progress.eta_seconds, 1), "losses": self._curve,
                        "message": f"training, step {progress.step}"})

    def _save(self, values: dict[str, Any]) -> None:
        self._saved = time.monotonic()
        if self.job is None:
            return
        self.job.meta.update(values, updated_at=time.time())
        self.job.save_meta()
