"""What changed in a project since the last run, asked of Label Studio cheaply.

- ``labeled_index``: every labeled task's id and ``updated_at`` from the task list, three fields a row
  (``GET /api/tasks?include=id,updated_at,total_annotations``, 1,000 rows a page). Label Studio 1.23
  moves a task's ``updated_at`` when an annotation of it is created, updated or deleted (and when a
  prediction is added): a task whose stamp is unchanged needs no fetch.
- ``fetch_tasks``: the full export of just those tasks (``GET /api/projects/{id}/export?ids[]=...``),
  in chunks. The SDK's own ``ids`` argument is sent as ``ids=`` and ignored by Label Studio 1.23
  (checked against the real server), hence the explicit ``ids[]`` query parameter.
"""

from __future__ import annotations

from collections.abc import Sequence

from label_studio_sdk import LabelStudio

from training.labelstudio.client import LabelStudioSource, parse_export, retrying

__all__ = ["EXPORT_CHUNK", "INDEX_PAGE", "fetch_tasks", "labeled_index"]

INDEX_PAGE = 1000
# Task ids per export request: keeps the query string far below servers' URL limits.
EXPORT_CHUNK = 200


def _stamp(value: object) -> str:
    """A task's ``updated_at`` as text (the SDK parses it into a datetime)."""
    return value.isoformat() if hasattr(value, "isoformat") else str(value or "")


def labeled_index(client: LabelStudio, source: LabelStudioSource, project_id: int,
                  page_size: int = INDEX_PAGE) -> dict[int, str]:
    """{task id: updated_at} of every task with at least one annotation (cancelled ones included)."""
    url = f"{source.base_url}api/tasks/?project={project_id}"
    index: dict[int, str] = {}
    page = 1
    while True:
        pager = retrying(source, "task index", url, lambda page=page: client.tasks.list(
            project=project_id, page=page, page_size=page_size, include="id,updated_at,total_annotations",
            fields="task_only"))
        items = pager.items or []
        for item in items:
            if (item.total_annotations or 0) > 0 or _has_cancelled(item):
                index[int(item.id)] = _stamp(item.updated_at)
        total = getattr(pager.response, "total", None)
        if len(items) < page_size or (total is not None and page * page_size >= total):
            return index
        page += 1


def _has_cancelled(item: object) -> bool:
    # total_annotations leaves out cancelled (skipped) ones; the export still lists such tasks.
    return bool(getattr(item, "cancelled_annotations", 0) or 0)


def fetch_tasks(client: LabelStudio, source: LabelStudioSource, project_id: int, ids: Sequence[int],
                chunk: int = EXPORT_CHUNK) -> list[dict]:
    """The JSON export (tasks with all their annotations) of the labeled tasks among ``ids``."""
    url = f"{source.base_url}api/projects/{project_id}/export"
    tasks: list[dict] = []
    ids = sorted(set(ids))
    for start in range(0, len(ids), chunk):
        wanted = ids[start : start + chunk]

        def fetch(wanted: list[int] = wanted) -> bytes:
            options = {"additional_query_parameters": {"ids[]": [str(i) for i in wanted]}}
            return b"".join(client.projects.exports.download_sync(
                project_id, export_type="JSON", download_all_tasks=False, download_resources=False,
                request_options=options))

        part = parse_export(retrying(source, "export", url, fetch), url)
        # A server that ignored the ids would send every task: keep only those asked for.
        asked = set(wanted)
        tasks.extend(t for t in part if t.get("id") in asked)
    return tasks
