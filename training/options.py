"""Option dataclasses that round-trip through JSON (job arguments, adapter metadata)."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Self


class JsonOptions:
    """Mixin for option dataclasses: ``to_dict`` and a ``from_dict`` that names unknown keys."""

    OPTION_KIND = "option"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        unknown = set(data) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown {cls.OPTION_KIND}(s): {', '.join(sorted(unknown))}")
        return cls(**data)
