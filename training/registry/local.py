"""`LocalRegistry`: adapter versions in a directory tree (one machine, or a shared filesystem).

Layout under `root`:

    <project>/
        .lock               fcntl lock: version allocation, activation, retention
        ACTIVE              "<version>\\n", replaced atomically
        LAST                highest version number ever allocated (numbers are never reused)
        v00000001/          weights.safetensors + info.json, complete before it appears
        .tmp-*/             a version being written (or left by a crashed writer)
        .trash-*/           a version being deleted

Atomicity: a version is written into a temp directory, fsynced, then renamed into place; the
active pointer is a file written beside its target and renamed over it. A crash at any point
leaves the previous versions and pointer untouched; leftovers are swept by later publishes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from training.registry.base import (
    AdapterRegistry,
    RegistryError,
    VersionInfo,
    check_artifact,
    check_keep_last,
    check_project,
    check_version,
    project_sort_key,
    retention_victims,
)

__all__ = ["LocalRegistry"]

WEIGHTS_FILE = "weights.safetensors"
INFO_FILE = "info.json"
ACTIVE_FILE = "ACTIVE"
LAST_FILE = "LAST"
LOCK_FILE = ".lock"
_VERSION_DIR = re.compile(r"v(\d{8,})")
# Leftovers of crashed writers older than this are removed; younger ones may still be in use.
STALE_SECONDS = 3600.0


def _version_dir_name(version: int) -> str:
    return f"v{version:08d}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _replace_file(path: Path, data: bytes) -> None:
    """Write `path` so readers see either the old or the new content, never a partial one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        _write_durably(tmp, data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _move_into_place(source: Path, target: Path) -> None:
    """The commit point of a publish (a separate function so tests can crash right here)."""
    os.rename(source, target)


class LocalRegistry(AdapterRegistry):
    """Adapter registry in a directory tree; safe across threads and processes on one host
    (and on filesystems with working `flock` and atomic `rename`)."""

    def __init__(self, root: str | Path, keep_last: int = 10) -> None:
        self.root = Path(root)
        self.keep_last = check_keep_last(keep_last)

    def __repr__(self) -> str:
        return f"LocalRegistry({str(self.root)!r}, keep_last={self.keep_last})"

    # --- paths and locking ------------------------------------------------------------------

    def _project_dir(self, project: str) -> Path:
        return self.root / check_project(project)

    @contextlib.contextmanager
    def _locked(self, project_dir: Path) -> Iterator[None]:
        project_dir.mkdir(parents=True, exist_ok=True)
        with open(project_dir / LOCK_FILE, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    @staticmethod
    def _stored_numbers(project_dir: Path) -> list[int]:
        try:
            names = os.listdir(project_dir)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for n in names if (m := _VERSION_DIR.fullmatch(n)))

    # --- writing -----------------------------------------------------------------------------

    def publish(
        self, project: str, weights: bytes, metadata: dict[str, Any], activate: bool = True
    ) -> VersionInfo:
        weights, _ = check_artifact(weights, metadata)
        project_dir = self._project_dir(project)
        project_dir.mkdir(parents=True, exist_ok=True)
        # The big write happens outside the lock; only numbering and the rename are serialised.
        staging: Path | None = Path(tempfile.mkdtemp(prefix=".tmp-", dir=project_dir))
        try:
            _write_durably(staging / WEIGHTS_FILE, weights)
            with self._locked(project_dir):
                version = self._allocate(project_dir)
                created = time.time()
                info = {"version": version, "created": created, "metadata": metadata}
                _write_durably(staging / INFO_FILE, json.dumps(info, sort_keys=True).encode())
                _fsync_dir(staging)
                _move_into_place(staging, project_dir / _version_dir_name(version))
                staging = None
                _fsync_dir(project_dir)
                if activate:
                    _replace_file(project_dir / ACTIVE_FILE, f"{version}\n".encode())
                self._apply_retention(project_dir)
                self._sweep_leftovers(project_dir)
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        is_active = bool(activate) or self.active_version(project) == version
        return VersionInfo(project, version, created, metadata, is_active)

    def _allocate(self, project_dir: Path) -> int:
        """Next version number; caller holds the lock."""
        last = 0
        with contextlib.suppress(FileNotFoundError, ValueError):
            last = int((project_dir / LAST_FILE).read_text().strip())
        stored = self._stored_numbers(project_dir)
        version = max([last, *stored]) + 1
        _replace_file(project_dir / LAST_FILE, f"{version}\n".encode())
        return version

    def _apply_retention(self, project_dir: Path) -> None:
        active = self._read_active(project_dir)
        for version in retention_victims(self._stored_numbers(project_dir), active, self.keep_last):
            self._remove_version(project_dir, version)

    @staticmethod
    def _remove_version(project_dir: Path, version: int) -> None:
        # Rename first so readers never see a version directory with files missing.
        trash = project_dir / f".trash-{uuid.uuid4().hex}"
        with contextlib.suppress(FileNotFoundError):
            os.rename(project_dir / _version_dir_name(version), trash)
            shutil.rmtree(trash, ignore_errors=True)

    @staticmethod
    def _sweep_leftovers(project_dir: Path) -> None:
        cutoff = time.time() - STALE_SECONDS
        for entry in project_dir.iterdir():
            if entry.name.startswith(".trash-") or (
                entry.name.startswith(".tmp-") and entry.stat().st_mtime < cutoff
            ):
                shutil.rmtree(entry, ignore_errors=True)

    def activate(self, project: str, version: int) -> VersionInfo:
        check_version(version)
        project_dir = self._project_dir(project)
        if not (project_dir / _version_dir_name(version)).is_dir():
            raise self._not_found(project, version)
        with self._locked(project_dir):
            # Checked again under the lock: retention may have removed it meanwhile.
            if not (project_dir / _version_dir_name(version)).is_dir():
                raise self._not_found(project, version)
            _replace_file(project_dir / ACTIVE_FILE, f"{version}\n".encode())
        info, _ = self._read_version(project, version, with_weights=False)
        return info

    def delete_version(self, project: str, version: int) -> None:
        check_version(version)
        project_dir = self._project_dir(project)
        with self._locked(project_dir):
            if not (project_dir / _version_dir_name(version)).is_dir():
                raise self._not_found(project, version)
            if self._read_active(project_dir) == version:
                raise ValueError(f"project {project!r}: version {version} is active; activate another one first")
            self._remove_version(project_dir, version)

    def delete_project(self, project: str) -> None:
        project_dir = self._project_dir(project)
        if not project_dir.exists():
            return
        trash = self.root / f".trash-{project}-{uuid.uuid4().hex}"
        with self._locked(project_dir):
            os.rename(project_dir, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def rename_project(self, project: str, new_name: str) -> None:
        source, target = self._project_dir(project), self._project_dir(new_name)
        if not self._stored_numbers(source):
            raise self._rename_refused(project, new_name, [])
        with self._locked(source), self._locked(target):
            stored = self._stored_numbers(target)
            if stored or not self._stored_numbers(source):
                raise self._rename_refused(project, new_name, stored)
            # The target holds at most a lock file and leftovers: set it aside, then one rename moves everything.
            trash = self.root / f".trash-{new_name}-{uuid.uuid4().hex}"
            os.rename(target, trash)
            os.rename(source, target)
            _fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    # --- reading -----------------------------------------------------------------------------

    def _read_active(self, project_dir: Path) -> int | None:
        try:
            text = (project_dir / ACTIVE_FILE).read_text()
        except FileNotFoundError:
            return None
        try:
            return int(text.strip())
        except ValueError as exc:
            raise RegistryError(f"corrupt active pointer {project_dir / ACTIVE_FILE}: {text!r:.40}") from exc

    def active_version(self, project: str) -> int | None:
        return self._read_active(self._project_dir(project))

    def _read_version(
        self, project: str, version: int, with_weights: bool, active: int | None = -1
    ) -> tuple[VersionInfo, bytes]:
        """`active` = the active version if the caller already read it (-1: read it here)."""
        version_dir = self._project_dir(project) / _version_dir_name(version)
        try:
            raw = (version_dir / INFO_FILE).read_bytes()
            weights = (version_dir / WEIGHTS_FILE).read_bytes() if with_weights else b""
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise self._not_found(project, version) from exc
        try:
            info = json.loads(raw)
            created, metadata = float(info["created"]), dict(info["metadata"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"corrupt version info {version_dir / INFO_FILE}: {exc}") from exc
        if active == -1:
            active = self.active_version(project)
        return VersionInfo(project, version, created, metadata, active == version), weights

    def versions(self, project: str) -> list[VersionInfo]:
        found = []
        active = self.active_version(project)
        for version in self._stored_numbers(self._project_dir(project)):
            try:
                found.append(self._read_version(project, version, with_weights=False, active=active)[0])
            except LookupError:
                continue  # removed by retention while we listed
        return found

    def load(self, project: str, version: int | None = None) -> tuple[VersionInfo, bytes]:
        if version is None:
            version = self.active_version(project)
            if version is None:
                raise self._not_found(project, None)
        else:
            check_version(version)
        return self._read_version(project, version, with_weights=True)

    def projects(self) -> list[str]:
        if not self.root.is_dir():
            return []
        names = [
            entry.name
            for entry in self.root.iterdir()
            if entry.is_dir() and not entry.name.startswith(".") and self._stored_numbers(entry)
        ]
        return sorted(names, key=project_sort_key)
