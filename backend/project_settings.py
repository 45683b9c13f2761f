"""Per-project admin switches, set from Label Studio's ML backend form (``extra_params``) and kept in Redis.

Switches: ``predictions`` (on/off), ``auto_training`` (on/off; the Start Training button still
trains), ``pinned_version`` (an adapter version to serve instead of the active one; null follows
the active version), ``split_instances`` (one region per connected instance instead of per class) and
``adapter``: the kind of adapter the next training run builds, ``decoder`` (frozen image encoder: trains
in seconds, embeddings stay valid for every version) or ``encoder`` (LoRA in the encoder too, for strong
domain shifts; best with a GPU worker). A change of kind trains from scratch. ``preencode`` (on/off):
encode the project's task images in the background when Label Studio connects and when tasks are
imported, so the first click on a task is warm.
The last label config of each known project (set up, or given switches) is kept too, so a /predict
without one works after a restart.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from typing import Any, Literal

import redis
from cachetools import LRUCache
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from training.jobs.redis_conn import RedisUnavailable
from training.registry import AdapterRegistry

log = logging.getLogger(__name__)

# Label configs kept in memory, all projects together (the largest real configs are tens of KB).
CONFIG_MEMORY_CHARS = 64_000_000
# Per-project state a backend process keeps in memory, for at most this many projects (the least recently
# used are dropped; Redis and the registry keep everything): requests naming made-up projects cannot grow it.
PROJECTS_IN_MEMORY = 10_000


class ProjectSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    predictions: bool = True
    auto_training: bool = True
    pinned_version: int | None = Field(None, ge=1)
    split_instances: bool = False
    adapter: Literal["decoder", "encoder"] = "decoder"
    preencode: bool = True


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


def check_pinned_version(registry: AdapterRegistry, project: str, version: int) -> None:
    """A pinned version must be stored: SettingsError (422) naming the stored ones otherwise.

    Call it inside ``backend.errors.registry_access`` (a storage failure is a 503)."""
    stored = [info.version for info in registry.versions(project)]
    if version not in stored:
        raise SettingsError(f"pinned_version {version} does not exist for project {project}; "
                            f"stored versions: {stored or 'none'}")


class ProjectSettingsStore:
    """Switches and label configs per project in Redis, with an in-memory copy for outages."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._memory: LRUCache[str, ProjectSettings] = LRUCache(PROJECTS_IN_MEMORY)
        # Bounded in characters: /predict may name any project id with a config (each at most 1 MB, checked
        # in backend.schemas); evicted ones are read from Redis again.
        self._configs: LRUCache[str, str] = LRUCache(maxsize=CONFIG_MEMORY_CHARS, getsizeof=len)
        self._seen: LRUCache[str, bool] = LRUCache(PROJECTS_IN_MEMORY)  # projects Redis is known to list
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
            return self._last_known(project)
        return self._settings_from(project, raw)

    def read(self, project: str, label_config: str | None = None) -> tuple[ProjectSettings, str | None]:
        """What a /predict needs, in one round trip: the switches and the label config.

        ``label_config`` (the request's) is returned, and kept as the project's config when the project
        is known (set up, or given switches): a /predict naming a project never set up writes nothing,
        so requests for any number of made-up projects cannot fill Redis. Without one, the stored
        config is returned (None if there is none). Redis down: the last known switches and the config
        this process has seen, with a warning.
        """
        with self._lock:
            record = self._needs_record(project, label_config)
            config = label_config if label_config is not None else self._configs.get(project)
        if config is not None and not record:
            return self.get(project), config  # the usual request: one GET, cheaper than a pipeline of one
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self._key(project, "settings"))
        if config is None:
            pipe.get(self._key(project, "label_config"))
        if record:
            pipe.sismember(self._projects_key, project)
        try:
            replies = pipe.execute()
        except redis.RedisError as exc:
            log.warning("project %s: Redis unreachable (%s); using the last known settings", project, exc)
            return self._last_known(project), config
        if config is None:
            config = _text(replies[1])
        if record and replies[-1]:
            self.remember_project(project, label_config)  # a known project's newest config: rare, one more trip
        if config is not None and label_config is None:
            with self._lock:
                self._configs[project] = config
        return self._settings_from(project, replies[0]), config

    def _last_known(self, project: str) -> ProjectSettings:
        with self._lock:
            return self._memory.get(project, ProjectSettings())

    def _settings_from(self, project: str, raw: bytes | str | None) -> ProjectSettings:
        """Stored switches parsed (defaults when absent or unreadable), and kept for outages."""
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
            if not self._needs_record(project, label_config):
                return
        try:
            pipe = self.client.pipeline()
            self._queue_record(pipe, project, label_config)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("project %s: cannot record the project in Redis (%s)", project, exc)
            return
        with self._lock:
            self._seen[project] = True
            if label_config is not None:
                self._configs[project] = label_config

    def _needs_record(self, project: str, label_config: str | None) -> bool:
        """Whether Redis lacks the project or this config (the caller holds the lock)."""
        return project not in self._seen or (label_config is not None and self._configs.get(project) != label_config)

    def _queue_record(self, pipe: redis.client.Pipeline, project: str, label_config: str | None) -> None:
        pipe.sadd(self._projects_key, project)
        if label_config is not None:
            pipe.set(self._key(project, "label_config"), label_config)

    def label_config(self, project: str) -> str | None:
        with self._lock:
            if project in self._configs:
                return self._configs[project]
        try:
            raw = self.client.get(self._key(project, "label_config"))
        except redis.RedisError as exc:
            log.warning("project %s: Redis unreachable (%s); no stored label config", project, exc)
            return None
        config = _text(raw)
        if config is None:
            return None
        with self._lock:
            self._configs[project] = config
        return config

    def rename(self, project: str, new_name: str) -> bool:
        """Move the switches and label config of ``project`` to ``new_name`` unless it has its own.

        Returns whether anything moved. Raises RedisUnavailable.
        """
        moved = False
        try:
            for what in ("settings", "label_config"):
                # RENAMENX: a target with switches of its own keeps them.
                with contextlib.suppress(redis.ResponseError):  # "no such key": nothing to move
                    moved |= bool(self.client.renamenx(self._key(project, what), self._key(new_name, what)))
            # Listed as long as something of it is left (a target with switches of its own kept them).
            left = self.client.exists(self._key(project, "settings"), self._key(project, "label_config"))
            pipe = self.client.pipeline()
            if not left:
                pipe.srem(self._projects_key, project)
            if moved:
                pipe.sadd(self._projects_key, new_name)
            pipe.execute()
        except redis.RedisError as exc:
            raise RedisUnavailable(f"cannot move project {project}'s settings: Redis unreachable ({exc})") from exc
        with self._lock:
            for cache in (self._memory, self._configs):
                cache.pop(project, None)
                cache.pop(new_name, None)
            self._seen.pop(project, None)
        return moved

    def projects(self) -> list[str]:
        try:
            members = self.client.smembers(self._projects_key)
        except redis.RedisError as exc:
            log.warning("Redis unreachable (%s); listing only projects seen by this process", exc)
            with self._lock:
                return sorted(set(self._seen) | set(self._memory) | set(self._configs))
        return sorted(m.decode() if isinstance(m, bytes) else m for m in members)


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value
