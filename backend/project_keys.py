"""Which Label Studio project a bare id means, and adopting what was stored under a bare id.

Label Studio names a project to an ML backend by ``"<id>.<created timestamp>"`` (see
``training.labelstudio.projects``), and samloop keys adapters, switches and training by that. A bare
id ("3") still arrives: from the admin API and CLI, from a task's ``project`` field, from a webhook
sent without its project object. It means the project with that id that Label Studio set up last
(each /setup records it), or, when none was set up with a key, the bare id itself.

Before keys carried the timestamp, everything was stored under the bare id. The first /setup of
``3.T`` adopts what is stored under "3": it moves there unless an adapter under "3" is older than
the project ``3.T`` itself (then it was trained for a project 3 of another Label Studio instance,
which restarted its ids at 1, and it stays under "3" for an admin to move or delete).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import redis
from cachetools import TTLCache
from fastapi import Request

from backend.errors import Conflict, RegistryUnavailable, project_param, registry_access
from backend.project_settings import ProjectSettingsStore
from training.jobs.keys import ProjectKeys, text
from training.jobs.redis_conn import RedisUnavailable
from training.labelstudio.projects import created_of, is_instance_key, project_number
from training.registry import AdapterRegistry, RegistryError

__all__ = ["ADOPT_CLOCK_SLACK_S", "Moved", "ProjectDirectory", "TargetTaken", "project_of"]

log = logging.getLogger(__name__)

# Label Studio's clock and the worker's may differ a little: an adapter this much older than the project
# still counts as trained after it.
ADOPT_CLOCK_SLACK_S = 60.0
# Bare ids looked up recently; another backend process may record a newer /setup, so entries expire.
LOOKUP_ENTRIES, LOOKUP_SECONDS = 10_000, 30.0


class TargetTaken(Conflict):
    """A move onto a key that has adapters of its own (nothing was moved): 409."""


class ProjectDirectory:
    """Bare id -> the key Label Studio set up last, kept in Redis so every backend process agrees."""

    def __init__(self, client: redis.Redis, prefix: str, registry: AdapterRegistry,
                 store: ProjectSettingsStore) -> None:
        self.client, self.prefix, self.registry, self.store = client, prefix, registry, store
        self._hash = f"{prefix}:backend:project-keys"
        self._lookups: TTLCache[str, str] = TTLCache(LOOKUP_ENTRIES, LOOKUP_SECONDS)
        self._lock = threading.Lock()

    def resolve(self, key: str) -> str:
        """``key`` itself when it names the instance's project, else the key last set up for that id."""
        if is_instance_key(key):
            return key
        with self._lock:
            if key in self._lookups:
                return self._lookups[key]
        try:
            latest = text(self.client.hget(self._hash, key)) or key
        except redis.RedisError as exc:
            log.warning("project %s: Redis unreachable (%s); using the bare id as the key", key, exc)
            return key
        with self._lock:
            self._lookups[key] = latest
        return latest

    def claim(self, key: str) -> None:
        """Called by /setup: ``key`` is now what its bare id means; adopt what the bare id holds."""
        if not is_instance_key(key):
            return
        number = str(project_number(key))
        try:
            previous = text(self.client.hget(self._hash, number))
            if previous != key:
                if self._training(number):
                    # Its version would land under the bare id after the move: the next /setup adopts.
                    log.info("project %s: a run under the bare id %s is queued or training; adopting "
                             "what it holds at a later /setup", key, number)
                    return
                # Adopted first: a failed move is tried again by the next /setup.
                self.adopt(number, key)
                self.client.hset(self._hash, number, key)
                log.info("project %s: Label Studio set up %s (before: %s)", number, key, previous or "none")
        except (redis.RedisError, RedisUnavailable, RegistryUnavailable, RegistryError) as exc:
            # Label Studio's connect must not fail on this: the project is served under its key anyway.
            log.warning("project %s: cannot record its key or adopt what project %s holds (%s)", key, number, exc)
            return
        with self._lock:
            self._lookups[number] = key

    def _training(self, bare: str) -> bool:
        keys = ProjectKeys(self.prefix, bare)
        return any(value is not None for value in self.client.mget(keys.lock, keys.queued))

    def adopt(self, bare: str, key: str) -> str:
        """Move what is stored under ``bare`` to ``key`` unless it belongs to another project.

        Returns what happened, in words (the log shows it).
        """
        with registry_access():
            legacy = self.registry.versions(bare)
        created = created_of(key)
        if legacy and created is not None and legacy[0].created < created - ADOPT_CLOCK_SLACK_S:
            why = (f"its adapter v{legacy[0].version} is older than the Label Studio project {key}, so it was "
                   "trained for a project of another Label Studio instance")
        else:
            try:
                return str(self.move(bare, key))
            except TargetTaken:
                why = f"{key} has adapters of its own"
        outcome = f"kept what is stored under project {bare} apart from {key}: {why}"
        log.warning("%s", outcome)
        return outcome

    def move(self, source: str, target: str) -> Moved:
        """Move ``source``'s adapters (all versions, numbers and the active one) and switches to ``target``.

        Raises TargetTaken (``target`` has adapters of its own), RegistryUnavailable, RedisUnavailable.
        """
        with registry_access():
            versions = len(self.registry.versions(source))
            taken = [info.version for info in self.registry.versions(target)]
            if versions and taken:
                raise TargetTaken(f"cannot move project {source} to {target}: {target} already has versions {taken}")
            if versions:
                self.registry.rename_project(source, target)
        moved = Moved(source, target, versions, self.store.rename(source, target))
        if moved:
            log.warning("%s", moved)
        return moved


@dataclass(frozen=True)
class Moved:
    """What ``ProjectDirectory.move`` moved."""

    source: str
    target: str
    versions: int
    settings: bool

    def __bool__(self) -> bool:
        return bool(self.versions or self.settings)

    def __str__(self) -> str:
        if not self:
            return f"nothing was stored under project {self.source}"
        return (f"moved project {self.source}'s {self.versions} adapter version(s)"
                f"{' and switches' if self.settings else ''} to {self.target}")


def project_of(request: Request, raw: str) -> str:
    """A project path or query parameter as the key it means (422 for a malformed one)."""
    return request.app.state.services.projects.resolve(project_param(raw))
