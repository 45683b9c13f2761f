"""The held-out set: which labeled tasks are never trained on, stable across runs and capped.

Rules, in order:

- A task keeps the side it was given when a run first saw it: a task once held out stays held out
  (versions are compared on the same tasks), and a task once trained on is never held out (its
  score would flatter the adapter).
- A task seen for the first time is a candidate when a hash of its id falls in one of ``every``
  buckets (one in five by default: the same share as before, independent of arrival order).
- Candidates fill free places up to ``cap``, class by class: each place goes to the candidate
  holding the class with the fewest held-out tasks so far (ties: hash order), so a rare class is
  held out as soon as it appears. Candidates past the cap are trained on.
- Below ``min_size`` labeled tasks nothing is held out yet (there is too little to train on).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["HoldoutPolicy", "Split", "assign_holdout"]


@dataclass(frozen=True)
class HoldoutPolicy:
    """``every``: one task in ``every`` is a candidate; ``cap``: most tasks held out; ``min_size``:
    labeled tasks needed before any is held out."""

    every: int = 5
    cap: int = 32
    min_size: int = 5

    def __post_init__(self) -> None:
        if not isinstance(self.every, int) or self.every < 2:
            raise ValueError(f"holdout every must be an integer >= 2, got {self.every!r}")
        if not isinstance(self.cap, int) or self.cap < 0:
            raise ValueError(f"holdout cap must be an integer >= 0, got {self.cap!r}")
        if not isinstance(self.min_size, int) or self.min_size < 0:
            raise ValueError(f"holdout min_size must be an integer >= 0, got {self.min_size!r}")


@dataclass(frozen=True)
class Split:
    """Task ids on each side, each sorted."""

    train: list[int]
    holdout: list[int]


def _hash(task_id: int) -> bytes:
    return hashlib.blake2b(str(task_id).encode(), digest_size=8).digest()


def is_candidate(task_id: int, every: int) -> bool:
    """Whether a task seen for the first time may be held out (a stable one-in-``every`` draw)."""
    return int.from_bytes(_hash(task_id), "big") % every == every - 1


def _fill(candidates: list[int], held: set[int], room: int, classes: Mapping[int, Sequence[str]]) -> list[int]:
    """Up to ``room`` candidates, each time the one holding the least held-out class (see module doc)."""
    counts: dict[str, int] = {}
    for task in held:
        for name in classes.get(task, ()):
            counts[name] = counts.get(name, 0) + 1
    pool = sorted(candidates, key=_hash)
    chosen: list[int] = []
    while pool and len(chosen) < room:
        def rarity(task: int) -> int:
            names = classes.get(task, ())
            return min((counts.get(n, 0) for n in names), default=1 << 30)

        best = min(pool, key=rarity)  # min keeps hash order among equals
        pool.remove(best)
        chosen.append(best)
        for name in classes.get(best, ()):
            counts[name] = counts.get(name, 0) + 1
    return chosen


def assign_holdout(tasks: Iterable[int], classes: Mapping[int, Sequence[str]], held_before: Iterable[int],
                   seen_before: Iterable[int], policy: HoldoutPolicy) -> Split:
    """Split the labeled ``tasks`` (ids) into train and held-out sides.

    Args:
        tasks: every labeled task usable now.
        classes: task id -> names of the classes its masks contain (for the class balance).
        held_before: the tasks the project's previous run held out.
        seen_before: every task the previous run saw (either side).
        policy: the share, the cap and the minimum project size.
    """
    current = sorted(set(tasks))
    if len(current) < policy.min_size:
        return Split(current, [])
    present = set(current)
    held = set(held_before) & present
    seen = set(seen_before)
    new = [t for t in current if t not in seen and t not in held]
    # At least one task is left to train on.
    room = max(0, min(policy.cap - len(held), len(current) - len(held) - 1))
    candidates = [t for t in new if is_candidate(t, policy.every)]
    held.update(_fill(candidates, held, room, classes))
    return Split([t for t in current if t not in held], sorted(held))
