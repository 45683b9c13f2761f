"""What the project's published versions tell the next run.

Every version's metadata carries the state a run needs, so workers that share only Redis (or the adapter
directory) agree on it:

- ``data.trained``: {task id: annotation stamp} of the tasks the version was trained on;
- ``data.holdout_ids``: the tasks it held out;
- ``evaluation.per_task``: its held-out scores, one ``TaskScore`` per task;
- ``clicks_base_traces``: SAM's decoder's click traces on the click sample (see ``click_check``).

The newest published version (promoted or not) decides the held-out set and which tasks were seen; the
active version decides which tasks are new to training and lends its scores to the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from training.pipeline.scores import TaskScore
from training.registry import AdapterRegistry

__all__ = ["History"]


def _task_map(raw: Any) -> dict[int, Any]:
    return {int(k): v for k, v in raw.items()} if isinstance(raw, dict) else {}


@dataclass
class History:
    """The state carried by the newest and the active versions (empty for a project never trained)."""

    active_version: int | None = None
    latest_version: int | None = None
    active: dict[str, Any] = field(default_factory=dict)
    latest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, registry: AdapterRegistry, project: str) -> History:
        versions = registry.versions(project)
        if not versions:
            return cls()
        latest = max(versions, key=lambda v: v.version)
        active = next((v for v in versions if v.active), None)
        return cls(active.version if active else None, latest.version, dict(active.metadata) if active else {},
                   dict(latest.metadata))

    @property
    def holdout_ids(self) -> list[int]:
        return [int(t) for t in (self.latest.get("data") or {}).get("holdout_ids") or []]

    @property
    def seen_ids(self) -> set[int]:
        data = self.latest.get("data") or {}
        return set(_task_map(data.get("trained"))) | {int(t) for t in data.get("holdout_ids") or []}

    @property
    def knows_its_data(self) -> bool:
        """Whether the active version recorded what it was trained on (versions before incremental runs
        did not: their successor trains in full)."""
        return isinstance((self.active.get("data") or {}).get("trained"), dict)

    def new_since_active(self, stamps: dict[int, str]) -> list[int]:
        """Tasks (of ``stamps``: id -> annotation stamp) the active version did not train on as they are."""
        trained = _task_map((self.active.get("data") or {}).get("trained"))
        return sorted(t for t, stamp in stamps.items() if trained.get(t) != stamp)

    def active_score(self, task_id: int, stamp: str) -> TaskScore | None:
        """The active version's stored score of a held-out task, if it was scored on this annotation."""
        raw = _task_map((self.active.get("evaluation") or {}).get("per_task"))
        found = raw.get(task_id)
        if not isinstance(found, dict):
            return None
        score = TaskScore.from_dict(found)
        return score if score.stamp == stamp else None

    @property
    def base_traces(self) -> dict:
        found = self.latest.get("clicks_base_traces")
        return found if isinstance(found, dict) else {}
