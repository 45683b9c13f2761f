"""The held-out rule, the paired mask gate and the batch mix, on plain numbers."""

from __future__ import annotations

import numpy as np
import pytest

from training.pipeline.holdout import HoldoutPolicy, assign_holdout, is_candidate
from training.pipeline.scores import MaskGate, TaskScore, bootstrap_noise, mean_iou
from training.pipeline.training_set import MixedSampler


def test_held_out_tasks_keep_their_side_and_new_ones_fill_the_cap_class_by_class():
    policy = HoldoutPolicy(every=3, cap=4, min_size=3)
    classes = {t: ["common"] for t in range(1, 60)} | {19: ["rare"], 18: ["common", "rare"]}
    first = assign_holdout(range(1, 11), classes, [], [], policy)
    assert first.holdout == [t for t in range(1, 11) if is_candidate(t, 3)][:4]
    # Later: more tasks arrive; the held-out tasks stay, trained ones never move over, the cap holds.
    later = assign_holdout(range(1, 40), classes, first.holdout, range(1, 11), policy)
    assert set(first.holdout) <= set(later.holdout) and len(later.holdout) == 4
    assert not set(later.holdout) & set(first.train)
    # With room, the candidate holding the least held-out class goes first.
    room = assign_holdout(range(1, 40), classes, [1, 2], range(1, 11), HoldoutPolicy(every=3, cap=3, min_size=3))
    assert room.holdout == [1, 2, 18] and is_candidate(18, 3)


def test_no_holdout_below_the_minimum_and_always_something_to_train_on():
    assert assign_holdout([1, 2], {}, [], [], HoldoutPolicy(min_size=3)).holdout == []
    split = assign_holdout([1, 2, 5], {}, [], [], HoldoutPolicy(every=3, cap=10, min_size=0))
    assert split.train and len(split.holdout) == 2  # 1, 2 and 5 are all candidates; one is kept to train on


def test_the_mask_gate_refuses_a_candidate_worse_beyond_the_noise():
    classes = ["a"]
    rng = np.random.default_rng(0)

    def scores(quality: float) -> list[TaskScore]:
        out = []
        for k in range(20):
            true = 1000
            inter = int(true * min(1.0, quality + rng.normal(0, 0.02)))
            out.append(TaskScore(f"s{k}", {"a": (inter, true, true)}))
        return out

    active = scores(0.8)
    sabotaged = [TaskScore(s.stamp, {"a": (0, 1000, 1000)}) for s in active]  # predicts nothing right
    verdict = MaskGate(0.01).decide(sabotaged, active, classes)
    assert not verdict["promote"] and verdict["margin"] < -verdict["allowed"]
    close = [TaskScore(s.stamp, {"a": (s.counts["a"][0] - 3, 1000, 1000)}) for s in active]
    assert MaskGate(0.01).decide(close, active, classes)["promote"]  # a hair worse: within tolerance
    assert not MaskGate(-0.05).decide(close, active, classes)["promote"]  # improvement demanded


def test_noise_grows_with_disagreement_between_tasks():
    classes = ["a"]
    base = [TaskScore(str(k), {"a": (500, 1000, 1000)}) for k in range(10)]
    steady = [TaskScore(str(k), {"a": (550, 1000, 1000)}) for k in range(10)]
    mixed = [TaskScore(str(k), {"a": (900 if k % 2 else 200, 1000, 1000)}) for k in range(10)]
    assert bootstrap_noise(steady, base, classes) == pytest.approx(0.0, abs=1e-9)
    assert bootstrap_noise(mixed, base, classes) > 0.05
    assert mean_iou(base, classes) == pytest.approx(500 / 1500)


def test_every_batch_gives_new_tasks_their_share():
    sampler = MixedSampler(new=[0], replay=list(range(1, 100)), share=0.5)
    rng = np.random.default_rng(0)
    batches = [sampler(rng, 4) for _ in range(10)]
    assert all(batch[:2] == [0, 0] and 0 not in batch[2:] for batch in batches)
    assert len({i for b in batches for i in b[2:]}) == 20  # replay draws without repeats within a round
    only_new = MixedSampler(new=[1, 2], replay=[], share=0.5)
    assert sorted(only_new(rng, 4)) == [1, 1, 2, 2]
    with pytest.raises(ValueError, match="share"):
        MixedSampler([1], [2], 0.0)
