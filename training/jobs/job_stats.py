"""Training jobs by outcome, with durations, counted in Redis by rq callbacks on the worker.

A job runs in a worker process, possibly on another machine, while ``/metrics`` is answered by
the backend: the counts therefore live in Redis (one hash per key prefix), where every backend
process reads the same numbers. Durations are kept as a cumulative histogram (Prometheus'
``le`` buckets) so the backend can expose them as one without seeing the jobs.

Outcomes: the job's own ``status`` (``promoted``, ``not_promoted``, ``skipped``, ``deferred``,
``up_to_date``), ``failed`` (an exception; a retried job counts once per attempt) and
``cancelled`` (stopped by an admin; see ``TrainingScheduler.cancel``).

The ``on_*`` functions are rq ``Callback`` targets: importable, module level, given the job.
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import UTC, datetime
from typing import Any

import redis
from rq.job import Job

from training.jobs.keys import FINISH, ProjectKeys, text
from training.labelstudio.projects import project_key

__all__ = ["DURATION_BUCKETS", "on_failure", "on_stopped", "on_success", "read_stats", "record_outcome"]

log = logging.getLogger(__name__)

# Seconds; a decoder-kind job takes tens of seconds on a CPU, an encoder-kind one up to TRAIN_MAX_SECONDS.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, math.inf)


def stats_key(prefix: str) -> str:
    return f"{prefix}:stats:training_jobs"


def _bucket_name(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else f"{bound:g}"


def record_outcome(connection: redis.Redis, prefix: str, outcome: str, seconds: float) -> None:
    """Count one finished job with ``outcome`` that ran ``seconds`` (one pipeline round trip)."""
    seconds = max(0.0, float(seconds))
    pipe = connection.pipeline(transaction=True)
    key = stats_key(prefix)
    pipe.hincrby(key, f"count:{outcome}", 1)
    pipe.hincrbyfloat(key, f"sum:{outcome}", seconds)
    for bound in DURATION_BUCKETS:
        if seconds <= bound:
            pipe.hincrby(key, f"le:{outcome}:{_bucket_name(bound)}", 1)
    pipe.execute()


def read_stats(connection: redis.Redis, prefix: str) -> dict[str, dict[str, Any]]:
    """``{outcome: {"count": n, "sum": seconds, "buckets": [(bound, cumulative count), ...]}}``."""
    raw = {text(k): text(v) for k, v in connection.hgetall(stats_key(prefix)).items()}
    outcomes = sorted({k.split(":", 2)[1] for k in raw if k.startswith("count:")})
    stats = {}
    for outcome in outcomes:
        buckets = [(bound, int(raw.get(f"le:{outcome}:{_bucket_name(bound)}", 0))) for bound in DURATION_BUCKETS]
        stats[outcome] = {"count": int(raw[f"count:{outcome}"]), "sum": float(raw.get(f"sum:{outcome}", 0.0)),
                          "buckets": buckets}
    return stats


def _prefix_of(job: Job) -> str:
    settings = job.args[1] if len(job.args) > 1 and isinstance(job.args[1], dict) else {}
    return str(settings.get("redis_prefix") or "samloop")


def _seconds_since_start(job: Job) -> float:
    if job.started_at is None:
        return 0.0
    started = job.started_at if job.started_at.tzinfo else job.started_at.replace(tzinfo=UTC)
    return (datetime.now(UTC) - started).total_seconds()


def _record(job: Job, connection: redis.Redis, outcome: str) -> None:
    # A callback that raises would mark a good job failed: statistics are best effort.
    try:
        record_outcome(connection, _prefix_of(job), outcome, _seconds_since_start(job))
    except redis.RedisError as exc:
        log.warning("job %s: cannot count its outcome %s: %s", job.id, outcome, exc)


def on_success(job: Job, connection: redis.Redis, result: Any) -> None:
    outcome = result.get("status") if isinstance(result, dict) else None
    _record(job, connection, str(outcome or "finished"))


def on_failure(job: Job, connection: redis.Redis, *exc_info: Any) -> None:
    _record(job, connection, "failed")


def on_stopped(job: Job, connection: redis.Redis) -> None:
    """An admin stopped the job (its work-horse is gone): free the project's lock at once instead of
    waiting for its TTL, record the run as cancelled, count it. The registry is untouched: a publish
    is atomic, so the active adapter is what it was."""
    _record(job, connection, "cancelled")
    project = str(job.args[0]) if job.args else ""
    if not project:
        return
    try:
        keys = ProjectKeys(_prefix_of(job), project_key(project))
        # FINISH with "not done": releases the lock only if this job holds it; the events stay due.
        connection.register_script(FINISH)(keys=[keys.lock, keys.done, keys.events, keys.queued],
                                           args=[job.id, 0, 0])
        connection.set(keys.last_run, json.dumps({
            "status": "cancelled", "project": project, "job_id": job.id, "finished_at": time.time(),
            "seconds": round(_seconds_since_start(job), 1),
            "reason": "stopped by an admin; the active adapter is unchanged"}))
    except (redis.RedisError, ValueError) as exc:
        log.warning("project %s: cannot record the cancelled job %s: %s", project, job.id, exc)
