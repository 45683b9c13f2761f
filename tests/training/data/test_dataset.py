"""Tests for training.data.dataset: samples, datasets, from_items and splits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.training.data.conftest import synthetic_image
from training.data.dataset import Sample, SegmentationDataset, from_items, split_fraction, split_holdout

# --- dataset containers, from_items and splits -------------------------------------------------


def make_dataset(n: int, classes: tuple[str, ...] = ("a", "b")) -> SegmentationDataset:
    items = []
    for i in range(n):
        image = synthetic_image(8 + i % 3, 10, i)
        mask = np.zeros(image.shape[:2], bool)
        mask[: i % 4] = True
        items.append((f"s{i}", image, {"a": mask}))
    return from_items(list(classes), items)


def test_sample_validation() -> None:
    image = np.zeros((4, 5, 3), np.uint8)
    Sample(image, np.zeros((2, 4, 5), bool), "ok")
    with pytest.raises(ValueError, match=r"image must be H×W×3, got \(4, 5\)"):
        Sample(np.zeros((4, 5), np.uint8), np.zeros((2, 4, 5), bool), "x")
    with pytest.raises(ValueError, match="float32"):
        Sample(image.astype(np.float32), np.zeros((2, 4, 5), bool), "x")
    with pytest.raises(ValueError, match="masks dtype must be bool, got uint8"):
        Sample(image, np.zeros((2, 4, 5), np.uint8), "x")
    with pytest.raises(ValueError, match=r"masks are 5×4 \(H×W\) but the image is 4×5"):
        Sample(image, np.zeros((2, 5, 4), bool), "x")
    with pytest.raises(ValueError, match="non-empty"):
        Sample(image, np.zeros((2, 4, 5), bool), "")


def test_dataset_validation() -> None:
    sample = Sample(np.zeros((4, 5, 3), np.uint8), np.zeros((2, 4, 5), bool), "s")
    with pytest.raises(ValueError, match=r"duplicate class names \['a'\]"):
        SegmentationDataset(["a", "a"], [sample])
    with pytest.raises(ValueError, match="non-empty"):
        SegmentationDataset(["a", " "], [sample])
    with pytest.raises(ValueError, match="at least one class"):
        SegmentationDataset([], [])
    with pytest.raises(ValueError, match=r"'s' has 2 mask planes.*3 classes"):
        SegmentationDataset(["a", "b", "c"], [sample])


def test_from_items_and_describe() -> None:
    gray = np.full((6, 7), 0.5)
    mask = np.zeros((6, 7), np.uint8)
    mask[1:3, 1:4] = 9
    dataset = from_items(["bg thing", "b", "c"], [("t1", gray, {"b": mask}), ("t2", gray, {})])
    assert dataset[0].image.dtype == np.uint8 and dataset[0].image[0, 0, 0] == 128
    assert dataset[0].masks[1].sum() == 6 and not dataset[0].masks[[0, 2]].any()
    description = dataset.describe()
    assert json.loads(json.dumps(description)) == description
    assert description["num_images"] == 2
    assert description["classes"]["b"] == {"pixels": 6, "images": 1}
    assert description["classes"]["c"] == {"pixels": 0, "images": 0}
    assert description["sample_names"] == ["t1", "t2"]
    assert description["image_sizes"] == [[6, 7], [6, 7]]
    with pytest.raises(ValueError, match=r"unknown class names \['x', 'y'\]"):
        from_items(["b"], [("t", gray, {"y": mask, "b": mask, "x": mask})])
    with pytest.raises(ValueError, match=r"mask for class 'b' has shape \(6, 6\)"):
        from_items(["b"], [("t", gray, {"b": mask[:, :6]})])


def test_subset_and_indexing() -> None:
    dataset = make_dataset(4)
    part = dataset.subset([3, 1])
    assert [s.name for s in part] == ["s3", "s1"] and part.class_names == ["a", "b"]
    assert len(part) == 2 and part[0] is dataset[3]
    with pytest.raises(IndexError, match="sample index 4"):
        dataset.subset([4])


def test_split_holdout_deterministic_every_fifth() -> None:
    dataset = make_dataset(23)
    train, val = split_holdout(dataset)
    assert len(val) == 4 and len(train) == 19
    names_val = {s.name for s in val}
    assert names_val.isdisjoint(s.name for s in train)
    train2, val2 = split_holdout(dataset.subset(range(22, -1, -1)))  # order of input doesn't matter
    assert {s.name for s in val2} == names_val
    assert [s.name for s in train] == [s.name for s in dataset if s.name not in names_val]
    _, val3 = split_holdout(make_dataset(23), every=3)
    assert len(val3) == 7


def test_split_holdout_small_dataset_has_no_validation() -> None:
    train, val = split_holdout(make_dataset(4))
    assert len(train) == 4 and len(val) == 0 and val.class_names == ["a", "b"]
    train, val = split_holdout(make_dataset(5))
    assert len(train) == 4 and len(val) == 1
    with pytest.raises(ValueError, match="every must be an int >= 2, got 1"):
        split_holdout(make_dataset(5), every=1)


def test_split_fraction() -> None:
    dataset = make_dataset(10)
    train, val = split_fraction(dataset, 0.3, seed=1)
    assert len(val) == 3 and len(train) == 7
    again = split_fraction(dataset.subset(range(9, -1, -1)), 0.3, seed=1)[1]
    assert {s.name for s in again} == {s.name for s in val}
    others = {frozenset(s.name for s in split_fraction(dataset, 0.3, seed=k)[1]) for k in range(6)}
    assert len(others) > 1, "different seeds must give different splits"
    assert len(split_fraction(make_dataset(2), 0.01)[1]) == 1
    assert len(split_fraction(make_dataset(1), 0.5)[1]) == 0
    with pytest.raises(ValueError, match="got 1.5"):
        split_fraction(dataset, 1.5)
