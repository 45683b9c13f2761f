"""Missed events recovered: which projects need a run that no webhook asked for.

Label Studio sends each webhook once. One answered 503 (Redis down) or sent while samloop was not
running is gone, and the annotations it announced would wait for the next event. So at start-up and
whenever Redis comes back, the backend compares, per project, when Label Studio last saw an annotation
change (``training.labelstudio.changes``) with what training has covered (``training.jobs.keys``):

- ``covered_until``: when the last run that ended normally claimed its events; its export saw Label
  Studio as of then. Runs before this key existed: the last run's ``finished_at``.
- a project being trained right now: that run's ``claimed_at`` (changes after it need a follow-up,
  which the running job enqueues when it ends, since the recovery counts as an event).
- ``events > done`` with no job waiting or running: accepted events whose job was lost.

Both times are wall clocks (Label Studio's and Redis'): a job claims at least ``debounce_seconds``
after the last event it covers, so clocks may disagree by that much before a covered change looks new.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job

from training.jobs.keys import ProjectKeys, text
from training.labelstudio.projects import project_key

__all__ = ["MISSED_EVENTS", "Coverage", "coverage", "missed_reason"]

log = logging.getLogger(__name__)

# The trigger a recovery run is queued with (never sent by Label Studio, so the webhook refuses it).
MISSED_EVENTS = "MISSED_EVENTS"
_LIVE = ("queued", "started", "scheduled", "deferred")


@dataclass(frozen=True)
class Coverage:
    """What training has covered of one project, as Redis says."""

    covered_until: float | None  # Redis time of the claim of the last run that ended normally
    running_since: float | None  # claim time of the run holding the lock now
    waiting_job: bool  # a job is queued (or scheduled for a retry) for the project
    uncovered_events: int  # accepted events no normal run has covered yet


def _number(value: bytes | str | None) -> float | None:
    try:
        return float(text(value)) if value is not None else None
    except ValueError:
        return None


def _job_waits(connection: redis.Redis, job_id: str | None) -> bool:
    if not job_id:
        return False
    try:
        return Job.fetch(job_id, connection=connection).get_status(refresh=False) in _LIVE
    except NoSuchJobError:
        return False


def coverage(connection: redis.Redis, prefix: str, project: str) -> Coverage:
    """Read the project's training keys (raises ``redis.RedisError``)."""
    keys = ProjectKeys(prefix, project_key(project))
    covered, claimed, lock, queued, events, done, last_run = connection.mget(
        keys.covered_until, keys.claimed_at, keys.lock, keys.queued, keys.events, keys.done, keys.last_run)
    covered_until = _number(covered)
    if covered_until is None and last_run:
        with_outcome = json.loads(last_run)
        if with_outcome.get("status") != "failed":
            covered_until = _number(str(with_outcome.get("finished_at")))
    return Coverage(covered_until=covered_until, running_since=_number(claimed) if lock else None,
                    waiting_job=_job_waits(connection, text(queued)),
                    uncovered_events=int(_number(events) or 0) - int(_number(done) or 0))


def missed_reason(state: Coverage, last_change: float | None) -> str | None:
    """Why the project needs a run now (None: it does not). ``last_change``: Label Studio's newest
    annotation change, unix seconds (None: no annotations)."""
    if state.waiting_job:
        return None  # the waiting job exports after the outage: it sees every change
    reference = state.running_since if state.running_since is not None else state.covered_until
    if last_change is not None and (reference is None or last_change > reference):
        seen = "never trained" if reference is None else f"{last_change - reference:.0f} s after the last claim"
        return f"annotations changed in Label Studio ({seen})"
    if state.running_since is None and state.uncovered_events > 0:
        return f"{state.uncovered_events} accepted events were never covered by a finished run"
    return None


def reconcile_project(connection: redis.Redis, prefix: str, project: str,
                      last_change: Callable[[str], float | None],
                      schedule: Callable[[str], dict]) -> dict:
    """Decide for one project and schedule it when a run was missed. Returns what happened (JSON-safe).

    ``last_change`` and ``schedule`` may raise; the caller decides what a failure means.
    """
    state = coverage(connection, prefix, project)
    if state.waiting_job:
        return {"project": project, "status": "waiting", "reason": "a job is already waiting"}
    reason = missed_reason(state, last_change(project))
    if reason is None:
        return {"project": project, "status": "up_to_date"}
    outcome = schedule(project)
    log.info("project %s: missed events recovered (%s): %s", project, reason, outcome.get("status"))
    return {"project": project, "status": "scheduled", "reason": reason, "training": outcome}
