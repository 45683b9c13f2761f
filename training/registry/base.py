"""The adapter registry interface: versioned adapter artifacts per Label Studio project.

An artifact is `weights` (safetensors bytes) plus `metadata` (a JSON-safe dict). Versions are
numbered 1, 2, 3, ... per project and never reused while the project exists; one version may be
active (the one the backend predicts with). Rolling back is activating an earlier version.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AdapterRegistry",
    "RegistryError",
    "VersionInfo",
    "VersionNotFound",
    "check_project",
    "retention_victims",
]

_PROJECT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class RegistryError(Exception):
    """A registry operation failed (bad input, storage problem)."""


class VersionNotFound(RegistryError, LookupError):
    """The requested version (or an active version) does not exist."""

    def __init__(self, project: str, version: int | None, available: list[int]) -> None:
        what = "no active version" if version is None else f"version {version} not found"
        super().__init__(f"project {project!r}: {what}; available versions: {available or 'none'}")
        self.project = project
        self.version = version
        self.available = available


@dataclass(frozen=True)
class VersionInfo:
    """One published adapter version.

    Attributes:
        project: project id, e.g. "3".
        version: 1, 2, 3, ... in publication order.
        created: publication time, unix seconds.
        metadata: the JSON-safe dict given to `publish`.
        active: whether this version is the project's active one (at the time of the call).
    """

    project: str
    version: int
    created: float
    metadata: dict[str, Any]
    active: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, e.g. for an HTTP answer."""
        return {
            "project": self.project,
            "version": self.version,
            "created": self.created,
            "metadata": self.metadata,
            "active": self.active,
        }


def check_project(project: str) -> str:
    """Validate a project id: it becomes a directory name and part of Redis keys."""
    if not isinstance(project, str) or not _PROJECT_RE.fullmatch(project):
        raise ValueError(
            f"project id must be 1-128 characters of letters, digits, '.', '_', '-' "
            f"starting with a letter or digit, got {project!r}"
        )
    return project


def check_version(version: int) -> int:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"version must be an int >= 1, got {version!r}")
    return version


def check_artifact(weights: bytes, metadata: dict[str, Any]) -> tuple[bytes, str]:
    """Return the weights as bytes and the metadata serialised as JSON."""
    if not isinstance(weights, bytes | bytearray | memoryview):
        raise TypeError(f"weights must be bytes, got {type(weights).__name__}")
    weights = bytes(weights)
    if not weights:
        raise ValueError("weights are empty")
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        encoded = json.dumps(metadata, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be JSON-safe: {exc}") from exc
    return weights, encoded


def check_keep_last(keep_last: int) -> int:
    if not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 1:
        raise ValueError(f"keep_last must be an int >= 1, got {keep_last!r}")
    return keep_last


def retention_victims(versions: list[int], active: int | None, keep_last: int) -> list[int]:
    """Versions to delete: all but the newest `keep_last`, never the active one."""
    newest = set(sorted(versions)[-keep_last:])
    return [v for v in sorted(versions) if v not in newest and v != active]


def project_sort_key(project: str) -> tuple[int, int, str]:
    """Label Studio keys in numeric order ("2" before "10", "3" before "3.1712345678" before "4"),
    then the other names."""
    number, dot, created = project.partition(".")
    if number.isdigit() and (not dot or created.isdigit()):
        return (0, int(number), created)
    return (1, 0, project)


class AdapterRegistry(ABC):
    """Versioned adapter storage per project. Implementations must be safe for concurrent
    publishers (distinct version numbers) and readers (never see a partial version)."""

    keep_last: int

    @abstractmethod
    def publish(
        self, project: str, weights: bytes, metadata: dict[str, Any], activate: bool = True
    ) -> VersionInfo:
        """Store a new version atomically (all or nothing), optionally make it active, then
        delete versions beyond `keep_last` (oldest first, never the active one)."""

    @abstractmethod
    def versions(self, project: str) -> list[VersionInfo]:
        """All stored versions in ascending order (empty for an unknown project)."""

    @abstractmethod
    def active_version(self, project: str) -> int | None:
        """The active version number, or None. Cheap: called on every prediction."""

    @abstractmethod
    def activate(self, project: str, version: int) -> VersionInfo:
        """Make a stored version active (rollback = activating an earlier one).

        Raises:
            VersionNotFound: the version is not stored.
        """

    @abstractmethod
    def load(self, project: str, version: int | None = None) -> tuple[VersionInfo, bytes]:
        """A version's info and weights; `None` = the active version.

        Raises:
            VersionNotFound: the version is not stored, or `None` and nothing is active.
        """

    @abstractmethod
    def projects(self) -> list[str]:
        """Projects with at least one stored version (numeric ids in numeric order)."""

    @abstractmethod
    def delete_version(self, project: str, version: int) -> None:
        """Remove one stored version (its number is never reused).

        Raises:
            VersionNotFound: the version is not stored.
            ValueError: it is the active version (activate another one first).
        """

    @abstractmethod
    def delete_project(self, project: str) -> None:
        """Remove all versions and the active pointer of a project; no-op if unknown."""

    @abstractmethod
    def rename_project(self, project: str, new_name: str) -> None:
        """Move all of ``project``'s versions, numbers and active pointer to ``new_name`` at once.

        Raises:
            RegistryError: ``project`` has no stored versions, or ``new_name`` already has some
                (nothing is moved).
        """

    def active(self, project: str) -> VersionInfo | None:
        """Info of the active version, or None."""
        for info in self.versions(project):
            if info.active:
                return info
        return None

    @staticmethod
    def _rename_refused(project: str, new_name: str, target_versions: list[int]) -> RegistryError:
        if target_versions:
            return RegistryError(f"cannot move project {project!r} to {new_name!r}: {new_name!r} already has "
                                 f"versions {target_versions}")
        return RegistryError(f"cannot move project {project!r}: it has no stored versions")

    def _not_found(self, project: str, version: int | None) -> VersionNotFound:
        return VersionNotFound(project, version, [v.version for v in self.versions(project)])
