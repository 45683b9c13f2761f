"""When a project's annotations last changed in Label Studio: what missed webhooks would have said.

Label Studio does not resend a webhook that failed (samloop answers 503 while its Redis is down) and
sends none while samloop is not running, so after an outage or at start-up the backend asks Label
Studio itself (``training.jobs.reconcile`` decides what to train). The answer comes from the same
JSON export a training run reads: each annotation carries ``created_at`` and ``updated_at``.

Limit: an annotation deleted while samloop was away leaves no trace in the export (a task whose only
annotation was deleted is not exported at all); the next annotation event trains without it.
"""

from __future__ import annotations

import logging
from datetime import datetime

from label_studio_sdk import LabelStudio

from training.labelstudio.client import LabelStudioError, LabelStudioSource, fetch_labeled_tasks, retrying
from training.labelstudio.projects import created_of, project_number

__all__ = ["ProjectGone", "last_annotation_change"]

log = logging.getLogger(__name__)


class ProjectGone(LookupError):
    """The key names a project that this Label Studio no longer has (deleted, or another instance's)."""


def _timestamp(value: object) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def check_identity(client: LabelStudio, source: LabelStudioSource, key: str) -> None:
    """Raise ProjectGone unless Label Studio's project ``project_number(key)`` is the one ``key`` names
    (ids restart at 1 in a fresh Label Studio: project 3 may now be someone else's)."""
    number = project_number(key)
    url = f"{source.base_url}api/projects/{number}/"
    try:
        project = retrying(source, "project lookup", url, lambda: client.projects.get(id=number))
    except LabelStudioError as exc:
        if exc.status == 404:
            raise ProjectGone(f"Label Studio at {source.url} has no project {number}") from exc
        raise
    created = created_of(key)
    found = getattr(project, "created_at", None)
    found_seconds = int(found.timestamp()) if isinstance(found, datetime) else None
    if created is not None and found_seconds is not None and found_seconds != created:
        raise ProjectGone(f"project {number} at {source.url} was created at {found_seconds}, not {created}: "
                          f"another project than {key}")


def last_annotation_change(client: LabelStudio, source: LabelStudioSource, key: str) -> float | None:
    """Unix time of the newest annotation created or updated in the project ``key`` names; None when it
    has no annotation.

    Raises:
        ProjectGone: Label Studio has no such project (or another one under its id).
        LabelStudioError: Label Studio unreachable or refusing, after retries.
    """
    check_identity(client, source, key)
    newest: float | None = None
    for task in fetch_labeled_tasks(client, source, project_number(key)):
        for annotation in task.get("annotations") or []:
            if not isinstance(annotation, dict):
                continue
            for field in ("updated_at", "created_at"):
                stamp = _timestamp(annotation.get(field))
                if stamp is not None and (newest is None or stamp > newest):
                    newest = stamp
    return newest
