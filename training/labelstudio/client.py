"""Talking to Label Studio: where it is, the SDK client, retries, token refresh, timed downloads.

Calls go through label-studio-sdk's ``LabelStudio`` client (legacy tokens and personal access
tokens alike). Label Studio being unreachable or answering 401/408/409/429/5xx is retried with
exponential backoff, then raised as ``LabelStudioError`` naming the URL and the status.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry as UrllibRetry

from training.labelstudio.label_config import LabelConfigError

__all__ = [
    "LabelStudioError",
    "LabelStudioSource",
    "TimeoutSession",
    "connect",
    "download_token",
    "fetch_label_config",
    "fetch_labeled_tasks",
    "list_tasks",
    "parse_export",
]

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({401, 408, 409, 429, 500, 502, 503, 504})
T = TypeVar("T")


class LabelStudioError(RuntimeError):
    """Label Studio could not be reached or refused us, after retries."""

    def __init__(self, message: str, url: str, status: int | None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


@dataclass(frozen=True)
class LabelStudioSource:
    """Where Label Studio is and how to talk to it.

    ``retries`` extra attempts per API call with ``backoff * 2**attempt`` seconds between them.
    """

    url: str
    api_key: str
    timeout: float = 60.0
    retries: int = 3
    backoff: float = 1.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"Label Studio URL must start with http:// or https://, got {self.url!r}")
        if not self.api_key:
            raise ValueError("a Label Studio API key (legacy token or personal access token) is required")
        if self.retries < 0 or self.backoff < 0 or self.timeout <= 0:
            raise ValueError(f"bad retry settings: retries={self.retries}, backoff={self.backoff}, "
                             f"timeout={self.timeout}")

    @property
    def base_url(self) -> str:
        # A trailing slash keeps a path prefix (https://host/ls/) when the SDK urljoins the token refresh.
        return self.url.rstrip("/") + "/"


def retrying(source: LabelStudioSource, what: str, url: str, call: Callable[[], T]) -> T:
    """Run ``call`` with retries on 401/408/409/429/5xx and connection errors, then a clear error."""
    last_status: int | None = None
    last_detail = ""
    for attempt in range(source.retries + 1):
        try:
            return call()
        except ApiError as exc:
            last_status, last_detail = exc.status_code, str(exc.body)[:200]
            if exc.status_code not in RETRY_STATUSES:
                break
        except (httpx.TransportError, requests.ConnectionError) as exc:
            last_status, last_detail = None, f"{type(exc).__name__}: {exc}"
        if attempt < source.retries:
            delay = source.backoff * (2 ** attempt)
            log.warning("Label Studio %s at %s failed (%s); retrying in %.1f s", what, url,
                        last_status or last_detail, delay)
            time.sleep(delay)
    status_text = f"HTTP {last_status}" if last_status is not None else "no response"
    hint = " (check LABEL_STUDIO_API_KEY)" if last_status in (401, 403) else ""
    raise LabelStudioError(
        f"Label Studio {what} failed at {url}: {status_text}{hint} after {source.retries + 1} attempts; "
        f"last answer: {last_detail}", url, last_status,
    )


def connect(source: LabelStudioSource) -> LabelStudio:
    """The SDK client for ``source``; its own retries are off so that ``retrying`` decides."""
    try:
        # max_retries=0: our own loop retries (401 included) and ends in one clear error.
        return LabelStudio(base_url=source.base_url, api_key=source.api_key, timeout=source.timeout, max_retries=0)
    except ApiError as exc:  # an expired or malformed personal access token is refused up front
        raise LabelStudioError(f"Label Studio API key for {source.url} is not usable: {exc.body}", source.url,
                               exc.status_code) from exc


def download_token(client: LabelStudio, source: LabelStudioSource) -> str:
    """The token get_local_path should send: for a personal access token, the current access token."""
    tokens = getattr(getattr(client, "_client_wrapper", None), "_tokens_client", None)
    if tokens is None:
        return source.api_key
    return retrying(source, "token refresh", source.base_url + "api/token/refresh/", lambda: tokens.api_key)


def fetch_label_config(client: LabelStudio, source: LabelStudioSource, project_id: int) -> str:
    """The project's label config XML.

    Raises:
        LabelConfigError: the project has none.
    """
    url = f"{source.base_url}api/projects/{project_id}/"
    project = retrying(source, "project lookup", url, lambda: client.projects.get(id=project_id))
    config = getattr(project, "label_config", None)
    if not config:
        raise LabelConfigError(f"project {project_id} at {url} has no label config")
    return config


def fetch_labeled_tasks(client: LabelStudio, source: LabelStudioSource, project_id: int) -> list[dict]:
    """Every labeled task with all its annotations, from the synchronous JSON export
    (``GET /api/projects/{id}/export``)."""
    url = f"{source.base_url}api/projects/{project_id}/export"

    def fetch() -> bytes:
        chunks = client.projects.exports.download_sync(
            project_id, export_type="JSON", download_all_tasks=False, download_resources=False
        )
        return b"".join(chunks)

    return parse_export(retrying(source, "export", url, fetch), url)


def parse_export(body: bytes, url: str) -> list[dict]:
    """The tasks of a JSON export's body; a clear ``LabelStudioError`` when it is not a list of tasks."""
    try:
        tasks = json.loads(body)
    except ValueError as exc:
        raise LabelStudioError(f"Label Studio export at {url} is not JSON: {exc}", url, 200) from exc
    if not isinstance(tasks, list):
        raise LabelStudioError(f"Label Studio export at {url} is not a list of tasks", url, 200)
    return [t for t in tasks if isinstance(t, dict)]


def list_tasks(client: LabelStudio, source: LabelStudioSource, project_id: int, limit: int,
               page_size: int = 100) -> list[dict]:
    """Up to ``limit`` of the project's tasks as ``{"id", "data"}``, in Label Studio's order
    (``GET /api/tasks``, a page at a time; stops at a short page or the total, since a page past the
    end answers 404)."""
    url = f"{source.base_url}api/tasks/?project={project_id}"
    tasks: list[dict] = []
    page = 1
    while len(tasks) < limit:
        pager = retrying(source, "task list", url, lambda page=page: client.tasks.list(
            project=project_id, page=page, page_size=page_size, fields="task_only"))
        items = pager.items or []
        tasks.extend({"id": item.id, "data": item.data or {}} for item in items)
        total = getattr(pager.response, "total", None)
        if len(items) < page_size or (total is not None and page * page_size >= total):
            break
        page += 1
    return tasks[:limit]


class TimeoutSession(requests.Session):
    """get_local_path calls requests without a timeout; a stuck server must not hang the job."""

    def __init__(self, timeout: float, retries: int, backoff: float) -> None:
        super().__init__()
        self._timeout = timeout
        retry = UrllibRetry(total=retries, backoff_factor=backoff, status_forcelist=(500, 502, 503, 504),
                            allowed_methods=frozenset({"GET"}), raise_on_status=False)
        adapter = HTTPAdapter(max_retries=retry)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def request(self, method, url, **kwargs):  # type: ignore[override]
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, **kwargs)
