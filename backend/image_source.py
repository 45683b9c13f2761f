"""Task image URL -> H x W x 3 uint8 RGB array, through the SDK's ``get_local_path``.

``get_local_path`` resolves Label Studio uploads, local-files storage and presigned cloud URLs,
and attaches the credential only when the URL's host is Label Studio's own (plain http URLs to
other hosts go out without it). It has no timeout or size limit of its own, so downloads run through
``backend.downloads.BoundedSession``: allowed hosts only, the token only to LS's media paths, a size
cap and a deadline for the whole download. That one session (its connection pool) serves every
download of an ``ImageSource``, from any thread; it keeps no cookies, so each download sends only
what ``get_local_path`` gives it. Downloads are cached on disk (bounded in size). Error messages name
the task's URL, never a path on this server.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from label_studio_sdk._extensions.label_studio_tools.core.utils import io as ls_io

from backend.downloads import BoundedSession, DownloadRefused, label_studio_base
from backend.ls_auth import LabelStudioAuth
from backend.settings import Settings
from training.data.images import ImageError, ReducedImage, load_image, load_reduced

log = logging.getLogger(__name__)

PRUNE_INTERVAL_S = 60.0
T = TypeVar("T")


class ImageFetchError(RuntimeError):
    """A task's image could not be had; the message names the URL and the reason."""


@dataclass(frozen=True)
class _Credentials:
    hostname: str
    auth: LabelStudioAuth | None


class ImageSource:
    """Fetches and decodes task images with Label Studio credentials.

    LABEL_STUDIO_URL + LABEL_STUDIO_API_KEY win; the ``hostname``/``access_token`` a project's
    /setup carried are used only when those are unset (LS's own idea of its host is often wrong
    inside Docker).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache_dir = settings.image_cache_dir
        self._configured = (
            _Credentials(settings.LABEL_STUDIO_URL, _auth_or_none(settings.LABEL_STUDIO_URL,
                                                                  settings.LABEL_STUDIO_API_KEY))
            if settings.LABEL_STUDIO_URL else None
        )
        self._from_setup: dict[str, _Credentials] = {}
        self._lock = threading.Lock()
        self._last_prune = 0.0
        # One connection pool for all downloads: a new session per image meant a new TCP connection per image.
        self._session = BoundedSession(settings.IMAGE_DOWNLOAD_TIMEOUT, settings.IMAGE_DOWNLOAD_DEADLINE,
                                       settings.max_image_download_bytes, settings.image_host_patterns)

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    def remember_setup(self, project: str, hostname: str | None, access_token: str | None) -> None:
        """Keep /setup's hostname and token for ``project`` (used only without LABEL_STUDIO_URL)."""
        if self._configured is not None or not hostname:
            return
        hostname = hostname.rstrip("/")
        if not hostname.startswith(("http://", "https://")):
            log.warning("project %s: /setup hostname %r is not an http(s) URL; ignored", project, hostname)
            return
        with self._lock:
            self._from_setup[project] = _Credentials(hostname, _auth_or_none(hostname, access_token or ""))

    def label_studio(self, project: str | None) -> LabelStudioAuth | None:
        """The Label Studio (URL and key) that serves ``project``'s tasks, when one is known."""
        creds = self._credentials(project)
        return creds.auth if creds is not None else None

    def _credentials(self, project: str | None) -> _Credentials | None:
        if self._configured is not None:
            return self._configured
        with self._lock:
            return self._from_setup.get(project or "")

    def fetch(self, url: object, task_id: int | None = None, project: str | None = None) -> np.ndarray:
        """Download (or read from the cache) and decode one image; raises ImageFetchError."""
        return self._read(url, task_id, project, load_image)

    def fetch_for_model(self, url: object, task_id: int | None, project: str | None, longest: int) -> ReducedImage:
        """As ``fetch``, for a model input of ``longest`` pixels: a large JPEG is decoded at a reduced
        scale (a 12 MP photo ~6x faster), its full size kept for the masks."""
        return self._read(url, task_id, project, lambda source, max_pixels: load_reduced(source, max_pixels, longest))

    def _read(self, url: object, task_id: int | None, project: str | None, decode: Callable[[Any, int], T]) -> T:
        if not isinstance(url, str) or not url.strip():
            raise ImageFetchError(f"task {task_id}: the image field is {url!r}, not a URL")
        max_pixels = self.settings.MAX_IMAGE_PIXELS
        try:
            if url.startswith("data:"):
                return decode(_decode_data_uri(url), max_pixels)
            path = self._local_path(url, task_id, project)
            try:
                return decode(path, max_pixels)
            except ImageError as exc:  # its message names the cached file: name the URL instead
                raise ImageFetchError(f"task {task_id}: {str(exc).replace(path, _short(url))}") from exc
        except ImageFetchError:
            raise
        except DownloadRefused as exc:
            raise ImageFetchError(f"task {task_id}: image refused: {exc}") from exc
        except Exception as exc:  # network, HTTP status, auth, decode: all mean "this task has no image"
            raise ImageFetchError(f"task {task_id}: cannot read image {_short(url)}: {type(exc).__name__}: "
                                  f"{self._scrub(str(exc))}") from exc
        finally:
            self._maybe_prune()

    def _scrub(self, text: str) -> str:
        """``text`` without this server's directories (the image cache, the data directory)."""
        for directory in (self.cache_dir.resolve(), self.cache_dir, self.settings.SAMLOOP_DATA_DIR.resolve()):
            text = text.replace(str(directory), "<server>")
        return text

    def _local_path(self, url: str, task_id: int | None, project: str | None) -> str:
        creds = self._credentials(project)
        hostname = creds.hostname if creds else ""
        token = creds.auth.access_token() if creds and creds.auth and _needs_token(url, hostname) else ""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with ls_io.http_session(self._session), label_studio_base(hostname):
            # get_local_path compares the URL's host with `hostname` before attaching the token.
            path = ls_io.get_local_path(url, cache_dir=str(self.cache_dir), hostname=hostname or None,
                                        access_token=token or None, task_id=task_id)
        _touch(path, self.cache_dir)
        return path

    def _maybe_prune(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last_prune < PRUNE_INTERVAL_S:
                return
            self._last_prune = now
        prune_cache(self.cache_dir, self.settings.IMAGE_CACHE_MB * 1024 * 1024)


def _auth_or_none(url: str, api_key: str) -> LabelStudioAuth | None:
    return LabelStudioAuth(url, api_key) if url and api_key else None


def _needs_token(url: str, hostname: str) -> bool:
    """Whether get_local_path could send the token for this URL (a relative LS path or LS's own host).

    Resolving a personal access token costs a request to LS, so skip it for foreign URLs.
    """
    if not hostname:
        return False
    if not url.startswith(("http://", "https://")):
        return True
    from urllib.parse import urlparse

    return urlparse(url).netloc == urlparse(hostname).netloc


def _decode_data_uri(url: str) -> bytes:
    header, _, payload = url.partition(",")
    if ";base64" not in header:
        raise ImageFetchError(f"data URI {header[:40]!r} is not base64-encoded")
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ImageFetchError(f"data URI is not valid base64: {exc}") from exc


def _short(url: str) -> str:
    return url if len(url) <= 120 else url[:100] + "…"


def _touch(path: str, cache_dir: Path) -> None:
    """Mark a cached file as recently used (files outside our cache, e.g. LS's own uploads, are left alone)."""
    if Path(path).resolve().parent != cache_dir.resolve():
        return
    with contextlib.suppress(OSError):
        os.utime(path)


def prune_cache(directory: Path, max_bytes: int) -> int:
    """Delete the least recently used files until ``directory`` holds at most ``max_bytes``; returns the count."""
    try:
        entries = [(e.stat().st_mtime, e.stat().st_size, e.path) for e in os.scandir(directory) if e.is_file()]
    except OSError:
        return 0
    total = sum(size for _, size, _ in entries)
    removed = 0
    for _, size, path in sorted(entries):
        if total <= max_bytes:
            break
        try:
            os.remove(path)
        except OSError:
            continue
        total -= size
        removed += 1
    if removed:
        log.info("image cache %s: removed %d old files", directory, removed)
    return removed
