"""Label Studio project ids: the one rule for reading them.

Label Studio names a project by its numeric id. Requests and events carry it as an int (3), a
numeric string ("3"), or, in /setup, as ``"<id>.<created timestamp>"`` ("3.1712345678"); the
timestamp only tells Label Studio instances apart and is dropped. The id, as a string without
leading zeros, is what keys a project everywhere in samloop (Redis keys, the adapter registry).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["project_id", "project_number"]

# ASCII digits only: str.isdigit and \d also accept other scripts' digits ("٣" would be project 3).
_PROJECT_RE = re.compile(r"([0-9]{1,18})(?:\.[0-9]{1,20})?")
# An id is at most 18 digits as a string; as a JSON integer too, so it can never make an unbounded key.
MAX_PROJECT_ID = 10**18 - 1


def project_id(value: Any) -> str:
    """Label Studio's project reference -> its id as a string: 3, "3" and "3.1712345678" give "3".

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
            return str(int(match.group(1)))
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:50] + "…"
    raise ValueError(f"project must be a project id like 3 or '3.1712345678', got {shown}")


def project_number(value: Any) -> int:
    """The same id as an int, for Label Studio's API."""
    return int(project_id(value))
