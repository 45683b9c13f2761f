"""Label Studio project references: the one rule for reading them.

Label Studio numbers its projects 1, 2, 3, ... and a fresh instance starts again at 1, so the number
alone does not say which project is meant. What Label Studio sends to an ML backend says more:
/setup, /predict and /versions carry ``"<id>.<created timestamp>"`` ("3.1712345678", the project's
creation time in whole seconds), and webhooks carry the project object with ``id`` and
``created_at``. That pair is the project's *key* everywhere in samloop (Redis keys, the adapter
registry, model versions). A bare number ("3") is a key too: the one written before keys carried
the timestamp, and what the admin API and the CLI accept as "the project 3 Label Studio set up last"
(see ``backend.project_keys``).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

__all__ = ["created_of", "event_key", "is_instance_key", "project_key", "project_number"]

# ASCII digits only: str.isdigit and \d also accept other scripts' digits ("٣" would be project 3).
_PROJECT_RE = re.compile(r"([0-9]{1,18})(?:\.([0-9]{1,20}))?")
# An id is at most 18 digits as a string; as a JSON integer too, so it can never make an unbounded key.
MAX_PROJECT_ID = 10**18 - 1


def project_key(value: Any) -> str:
    """Label Studio's project reference -> its key: 3 and "3" give "3", " 3.1712345678" gives "3.1712345678".

    Leading zeros are dropped, so one project has one key.

    Raises:
        ValueError: naming the value, for anything else (negative ids, booleans, other text).
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"project must be a project id like 3 or '3.1712345678', got {value!r}")
    if isinstance(value, int):
        if abs(value) > MAX_PROJECT_ID:  # checked first: str() of a 5000-digit int raises
            raise ValueError(f"project id must have at most 18 digits, got a {value.bit_length()}-bit number")
        if value < 0:
            raise ValueError(f"project id must not be negative, got {value}")
        return str(value)
    if isinstance(value, str):
        match = _PROJECT_RE.fullmatch(value.strip()) if len(value) <= 64 else None
        if match:
            number, created = match.groups()
            return str(int(number)) if created is None else f"{int(number)}.{int(created)}"
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:50] + "…"
    raise ValueError(f"project must be a project id like 3 or '3.1712345678', got {shown}")


def project_number(value: Any) -> int:
    """The project's id in its Label Studio, for Label Studio's API: "3.1712345678" gives 3."""
    return int(project_key(value).partition(".")[0])


def created_of(key: str) -> int | None:
    """The creation timestamp in a key ("3.1712345678" -> 1712345678), None for a bare id."""
    _, _, created = project_key(key).partition(".")
    return int(created) if created else None


def is_instance_key(key: str) -> bool:
    """Whether ``key`` names the Label Studio project exactly (id and creation time)."""
    return created_of(key) is not None


def event_key(project: Any) -> str:
    """A webhook's ``project``: an object ``{id, created_at, ...}`` gives the same key as /setup's
    ``"<id>.<created timestamp>"``; an object without ``created_at``, a number or a string gives
    what ``project_key`` gives.

    Raises:
        ValueError: naming a malformed id or ``created_at``.
    """
    if not isinstance(project, dict):
        return project_key(project)
    number = project_key(project.get("id"))
    created = project.get("created_at")
    if created is None:
        return number
    if not isinstance(created, str) or len(created) > 64:
        raise ValueError(f"project created_at must be an ISO 8601 time, got {str(created)[:64]!r}")
    try:
        moment = datetime.fromisoformat(created)
    except ValueError as exc:
        raise ValueError(f"project created_at must be an ISO 8601 time, got {created!r}") from exc
    if moment.tzinfo is None:
        raise ValueError(f"project created_at must carry a time zone, got {created!r}")
    seconds = int(moment.timestamp())  # Label Studio's own rule for the key it sends to /setup
    if seconds < 0:
        raise ValueError(f"project created_at must not be before 1970, got {created!r}")
    return f"{number}.{seconds}"
