"""The second synthetic family (``testkit.second_family``): the scenes no tuning has seen, by value."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from benchmarks.quality.data import synthetic_data
from testkit.second_family import SECOND_CLASSES, second_dataset
from testkit.standin import PRETRAIN_CLASSES, TARGET_CLASSES, target_dataset
from training.data.dataset import DatasetError

SIZE = 96


def test_scenes_hold_every_class_with_exclusive_non_empty_masks():
    data = second_dataset(12, SIZE, seed=3)
    assert data.class_names == SECOND_CLASSES and len(data) == 12
    for sample in data.samples:
        assert sample.image.shape == (SIZE, SIZE, 3) and sample.image.dtype == np.uint8
        assert sample.masks.shape == (3, SIZE, SIZE) and sample.masks.dtype == bool
        assert sample.masks.sum(axis=0).max() <= 1  # one class per pixel
        covered = sample.masks.any(axis=0).mean()
        assert 0.02 < covered < 0.6, sample.name  # objects, not empty scenes nor whole-image masks
    present = np.array([[m.any() for m in s.masks] for s in data.samples])
    assert present.any(axis=0).all()  # each class occurs somewhere
    assert present.sum(axis=1).min() >= 1  # no scene without objects in 12 draws at this seed
    # A class is absent from a scene now and then (15 %), so predicting nothing is tested too.
    assert not present.all()


def test_the_same_seed_gives_the_same_scenes_and_another_seed_others():
    first, again, other = (second_dataset(3, SIZE, seed=s) for s in (7, 7, 8))
    for a, b in zip(first.samples, again.samples, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.masks, b.masks)
        assert a.name == b.name
    assert not np.array_equal(first.samples[0].image, other.samples[0].image)


def test_it_differs_from_the_stand_ins_families():
    assert not set(SECOND_CLASSES) & (set(TARGET_CLASSES) | set(PRETRAIN_CLASSES))
    second, target = second_dataset(8, SIZE, seed=0), target_dataset(8, SIZE, seed=0)
    # The target's background is pixel noise on a ramp; the clutter here is flat between hard edges:
    # the mean absolute difference of horizontal neighbours in the background is far lower.
    def roughness(data):
        steps = [np.abs(np.diff(s.image.astype(np.float32), axis=1))[~s.masks.any(axis=0)[:, 1:]].mean()
                 for s in data.samples]
        return float(np.mean(steps))

    assert roughness(second) < 0.5 * roughness(target)
    # A third of a second-family image's objects come twice: some class mask has two separate parts.
    parts = [cv2.connectedComponents(m.astype(np.uint8))[0] - 1 for s in second.samples for m in s.masks if m.any()]
    assert max(parts) >= 2


def test_the_quality_benchmark_selects_it_by_name():
    data = synthetic_data(4, 2, SIZE, family="synthetic:second")
    assert data.source == "synthetic:second" and data.pool.class_names == SECOND_CLASSES
    assert len(data.pool) == 4 and len(data.held_out) == 2
    target = synthetic_data(4, 2, SIZE)
    assert target.source == "synthetic:target" and target.fingerprint() != data.fingerprint()
    with pytest.raises(DatasetError, match="synthetic:third"):
        synthetic_data(4, 2, SIZE, family="synthetic:third")
