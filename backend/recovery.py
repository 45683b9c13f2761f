"""Recovering missed webhooks: at start-up and when Redis comes back, ask Label Studio what changed.

The decision per project is ``training.jobs.reconcile``'s; this module picks the projects (every one
the backend knows whose auto-training is on), finds each one's Label Studio (LABEL_STUDIO_URL and
LABEL_STUDIO_API_KEY, else what its /setup carried in this process) and runs the pass in a thread of its
own: Label Studio's exports can take seconds, and neither start-up nor the health thread waits for them.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis

from training.jobs.reconcile import MISSED_EVENTS, reconcile_project
from training.labelstudio.changes import ProjectGone, last_annotation_change
from training.labelstudio.client import LabelStudioError, connect

__all__ = ["Recovery"]

log = logging.getLogger(__name__)


class Recovery:
    """Runs reconciliation passes one at a time; a pass asked for while one runs follows it once.

    A pass that could not ask Label Studio about every project (unreachable, refusing) is tried again
    after ``retry_delays`` (the last one repeats): Label Studio may be down at samloop's start too.
    """

    def __init__(self, services: Any, retry_delays: tuple[float, ...] = (60, 120, 300, 900)) -> None:
        self.services = services
        self.retry_delays = retry_delays
        self.last: dict[str, Any] | None = None  # the last pass: when, why, per-project outcomes
        self._retries = 0
        self._retry_at: float | None = None
        self._wake = threading.Condition()
        self._pending: str | None = None
        self._running = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="samloop-recovery", daemon=True)
        self._thread.start()

    def request(self, reason: str) -> None:
        with self._wake:
            self._pending = reason
            self._wake.notify_all()

    def idle(self) -> bool:
        with self._wake:
            return self._pending is None and not self._running

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        self._thread.join(timeout=5)

    def _next(self) -> str | None:
        """Wait for a request or a due retry; None when closed (the caller holds ``_wake``)."""
        while not self._closed and self._pending is None:
            if self._retry_at is not None and time.monotonic() >= self._retry_at:
                self._retry_at = None
                return "retry: Label Studio could not be asked about every project"
            timeout = None if self._retry_at is None else self._retry_at - time.monotonic()
            self._wake.wait(timeout)
        if self._closed:
            return None
        reason, self._pending = self._pending, None
        return reason

    def _run(self) -> None:
        while True:
            with self._wake:
                reason = self._next()
                if reason is None:
                    return
                self._running = True
            complete = False
            try:
                self.last = self.run_pass(reason)
                complete = not any(o["status"] in ("failed", "unreachable") for o in self.last["projects"])
            except Exception:  # one failed pass must not end recovery for the next outage
                log.exception("recovery of missed events failed")
            finally:
                with self._wake:
                    self._running = False
                    self._plan_retry(complete)

    def _plan_retry(self, complete: bool) -> None:
        if complete:
            self._retries, self._retry_at = 0, None
            return
        delay = self.retry_delays[min(self._retries, len(self.retry_delays) - 1)]
        self._retries += 1
        self._retry_at = time.monotonic() + delay
        log.warning("recovery of missed events incomplete; trying again in %.0f s", delay)

    # ----- one pass ---------------------------------------------------------------------------------
    def projects(self) -> list[str]:
        """Every project the backend knows (by its current key) whose auto-training is on."""
        services = self.services
        known = set(services.store.projects())
        try:
            known |= set(services.registry.projects())
        except Exception as exc:  # noqa: BLE001 - a registry outage leaves the settings' projects
            log.warning("recovery: cannot list the registry's projects: %s", exc)
        keys = sorted({services.projects.resolve(project) for project in known})
        return [key for key in keys if services.store.get(key).auto_training]

    def run_pass(self, reason: str) -> dict[str, Any]:
        started = time.time()
        outcomes: list[dict[str, Any]] = []
        for project in self.projects():
            if outcomes and outcomes[-1]["status"] == "unreachable":
                # The same Label Studio for all of them: no point waiting on its timeouts again.
                outcomes.append({"project": project, "status": "unreachable", "reason": "not tried"})
                continue
            outcomes.append(self.reconcile(project))
        scheduled = [o["project"] for o in outcomes if o["status"] == "scheduled"]
        log.info("recovery of missed events (%s): %d projects checked, scheduled: %s", reason, len(outcomes),
                 scheduled or "none")
        return {"reason": reason, "at": started, "seconds": round(time.time() - started, 2), "projects": outcomes}

    def reconcile(self, project: str) -> dict[str, Any]:
        services = self.services
        auth = services.images.label_studio(project)
        if auth is None:
            return {"project": project, "status": "skipped",
                    "reason": "no Label Studio URL and API key (set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)"}
        try:
            source = auth.source()
            client = connect(source)
            return reconcile_project(
                services.redis.client, services.settings.SAMLOOP_REDIS_PREFIX, project,
                lambda key: last_annotation_change(client, source, key),
                lambda key: services.scheduler.schedule(key, MISSED_EVENTS, True))
        except ProjectGone as exc:
            return {"project": project, "status": "skipped", "reason": str(exc)}
        except (LabelStudioError, redis.RedisError, ValueError) as exc:
            log.warning("recovery: project %s not checked: %s", project, exc)
            unreachable = isinstance(exc, LabelStudioError) and exc.status is None
            return {"project": project, "status": "unreachable" if unreachable else "failed", "reason": str(exc)}
