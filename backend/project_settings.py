"""Per-project admin switches, set from Label Studio's ML backend form (``extra_params``) and kept in Redis.

Switches: ``predictions`` (on/off), ``auto_training`` (on/off; the Start Training button still
trains), ``pinned_version`` (an adapter version to serve instead of the active one; null follows
the active version) and ``split_instances`` (one region per connected instance instead of per class).
The last label config seen per project is kept too, so /predict works after a restart without /setup.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from training.jobs.redis_conn import RedisUnavailable

log = logging.getLogger(__name__)


class ProjectSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    predictions: bool = True
    auto_training: bool = True
    pinned_version: int | None = Field(None, ge=1)
    split_instances: bool = False


SWITCHES = tuple(ProjectSettings.model_fields)


class SettingsError(ValueError):
    """Bad switch names or values; the message names them."""


def parse_extra_params(raw: Any) -> dict[str, Any]:
    """``extra_params`` as LS sends it (a JSON string, an object, empty or null) -> validated changes.

    Returns only the keys given (so a partial update leaves the other switches alone).
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"extra_params is not valid JSON ({exc.msg} at position {exc.pos}): {raw[:200]!r}"
                                ) from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SettingsError(f"extra_params must be a JSON object with keys {', '.join(SWITCHES)}; got {raw!r}")
    return validate_changes(raw)


def validate_changes(changes: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(changes) - set(SWITCHES))
    if unknown:
        raise SettingsError(f"unknown setting(s) {', '.join(map(repr, unknown))}; known: {', '.join(SWITCHES)}")
    try:
        checked = ProjectSettings(**changes)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})"
                             for e in exc.errors())
        raise SettingsError(f"bad setting value(s): {problems}") from exc
    return {key: getattr(checked, key) for key in changes}


class ProjectSettingsStore:
    """Switches and label configs per project in Redis, with an in-memory copy for outages."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._memory: dict[str, ProjectSettings] = {}
        self._configs: dict[str, str] = {}
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def _key(self, project: str, what: str) -> str:
        # "backend:" keeps these apart from the adapter registry's "<prefix>:project:..." keys.
        return f"{self.prefix}:backend:project:{project}:{what}"

    @property
    def _projects_key(self) -> str:
        return f"{self.prefix}:backend:projects"

    def get(self, project: str) -> ProjectSettings:
        """Current switches; Redis down -> the last known ones (or defaults), with a warning."""
        try:
            raw = self.client.get(self._key(project, "settings"))
        except redis.RedisError as exc:
            log.warning("project %s: Redis unreachable (%s); using the last known settings", project, exc)
            with self._lock:
                return self._memory.get(project, ProjectSettings())
        settings = ProjectSettings()
        if raw:
            try:
                settings = ProjectSettings.model_validate_json(raw)
            except ValidationError as exc:
                log.error("project %s: stored settings are unreadable (%s); using defaults", project, exc)
        with self._lock:
            self._memory[project] = settings
        return settings

    def update(self, project: str, changes: dict[str, Any]) -> ProjectSettings:
        """Apply validated ``changes``; raises SettingsError or RedisUnavailable."""
        changes = validate_changes(changes)
        current = self.get(project)
        updated = current.model_copy(update=changes)
        try:
            pipe = self.client.pipeline()
            pipe.set(self._key(project, "settings"), updated.model_dump_json())
            pipe.sadd(self._projects_key, project)
            pipe.execute()
        except redis.RedisError as exc:
            raise RedisUnavailable(f"cannot save settings of project {project}: Redis unreachable ({exc})") from exc
        with self._lock:
            self._memory[project] = updated
        if changes:
            log.info("project %s: settings %s", project, updated.model_dump())
        return updated

    def remember_project(self, project: str, label_config: str | None = None) -> None:
        """Note that ``project`` exists and keep its label config (Redis is written only on a change)."""
        with self._lock:
            if project in self._seen and (label_config is None or self._configs.get(project) == label_config):
                return
        try:
            pipe = self.client.pipeline()
            pipe.sadd(self._projects_key, project)
            if label_config is not None:
                pipe.set(self._key(project, "label_config"), label_config)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("project %s: cannot record the project in Redis (%s)", project, exc)
            return
        with self._lock:
            self._seen.add(project)
            if label_config is not None:
                self._configs[project] = label_config

    def label_config(self, project: str) -> str | None:
        with self._lock:
            if project in self._configs:
                return self._configs[project]
        try:
            raw = self.client.get(self._key(project, "label_config"))
        except redis.RedisError as exc:
            log.warning("project %s: Redis unreachable (%s); no stored label config", project, exc)
            return None
        if raw is None:
            return None
        config = raw.decode() if isinstance(raw, bytes) else raw
        with self._lock:
            self._configs[project] = config
        return config

    def projects(self) -> list[str]:
        try:
            members = self.client.smembers(self._projects_key)
        except redis.RedisError as exc:
            log.warning("Redis unreachable (%s); listing only projects seen by this process", exc)
            with self._lock:
                return sorted(self._seen | set(self._memory) | set(self._configs))
        return sorted(m.decode() if isinstance(m, bytes) else m for m in members)
