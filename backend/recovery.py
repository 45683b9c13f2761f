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
    """Runs reconciliation passes one at a time; a pass asked for while one runs follows it once."""

    def __init__(self, services: Any) -> None:
        self.services = services
        self.last: dict[str, Any] | None = None  # the last pass: when, why, per-project outcomes
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

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._pending is not None or self._closed)
                if self._closed:
                    return
                reason, self._pending, self._running = self._pending, None, True
            try:
                self.last = self.run_pass(reason)
            except Exception:  # one failed pass must not end recovery for the next outage
                log.exception("recovery of missed events failed")
            finally:
                with self._wake:
                    self._running = False

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
        outcomes = [self.reconcile(project) for project in self.projects()]
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
            return {"project": project, "status": "failed", "reason": str(exc)}
