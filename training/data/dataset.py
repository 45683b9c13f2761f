"""Segmentation datasets: images with one boolean mask plane per class.

A dataset is a list of `Sample`s plus the class order shared by all of them. Sources:
`from_items` (in-memory, fed by the Label Studio export), `training.data.mask_folder` (class-id
PNGs) and `training.data.coco` (COCO instance JSON). Splits are deterministic so that re-training
on the same annotations evaluates on the same held-out images.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.data.images import to_rgb_uint8

__all__ = [
    "DatasetError",
    "Sample",
    "SegmentationDataset",
    "from_items",
    "split_holdout",
    "split_fraction",
]

class DatasetError(ValueError):
    """A dataset source is malformed; the message names the file and the bad entry."""


@dataclass
class Sample:
    """One image and its per-class masks.

    Attributes:
        image: H×W×3 uint8 RGB, display orientation.
        masks: C×H×W bool, plane c is class c of the owning dataset's `class_names`.
        name: identifies the sample in errors and metadata (file name or task id).
    """

    image: np.ndarray
    masks: np.ndarray
    name: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"sample name must be a non-empty string, got {self.name!r}")
        image, masks = self.image, self.masks
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, "shape", type(image).__name__)
            raise ValueError(f"sample {self.name!r}: image must be H×W×3, got {shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"sample {self.name!r}: image dtype must be uint8, got {image.dtype}")
        if not isinstance(masks, np.ndarray) or masks.ndim != 3:
            shape = getattr(masks, "shape", type(masks).__name__)
            raise ValueError(f"sample {self.name!r}: masks must be C×H×W, got {shape}")
        if masks.dtype != np.bool_:
            raise ValueError(f"sample {self.name!r}: masks dtype must be bool, got {masks.dtype}")
        if masks.shape[1:] != image.shape[:2]:
            raise ValueError(
                f"sample {self.name!r}: masks are {masks.shape[1]}×{masks.shape[2]} (H×W) "
                f"but the image is {image.shape[0]}×{image.shape[1]}"
            )

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return int(self.image.shape[0]), int(self.image.shape[1])


@dataclass
class SegmentationDataset:
    """Samples sharing one class order. Images may differ in size."""

    class_names: list[str]
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.class_names = list(self.class_names)
        self.samples = list(self.samples)
        _check_class_names(self.class_names)
        for sample in self.samples:
            if not isinstance(sample, Sample):
                raise TypeError(f"samples must be Sample objects, got {type(sample).__name__}")
            if sample.masks.shape[0] != len(self.class_names):
                raise ValueError(
                    f"sample {sample.name!r} has {sample.masks.shape[0]} mask planes, "
                    f"the dataset has {len(self.class_names)} classes {self.class_names}"
                )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def subset(self, indices: Iterable[int]) -> SegmentationDataset:
        """A dataset with the samples at `indices` (in that order), sharing the sample objects."""
        chosen = []
        for index in indices:
            if not isinstance(index, int | np.integer) or not 0 <= index < len(self.samples):
                raise IndexError(f"sample index {index!r} out of range for {len(self.samples)} samples")
            chosen.append(self.samples[int(index)])
        return SegmentationDataset(list(self.class_names), chosen)

    def describe(self) -> dict[str, Any]:
        """JSON-safe summary for adapter metadata.

        Returns:
            {"num_images": int, "class_names": [str], "classes": {name: {"pixels": int,
            "images": int}}, "sample_names": [str], "image_sizes": [[H, W], ...]}
        """
        pixels = [0] * len(self.class_names)
        images = [0] * len(self.class_names)
        for sample in self.samples:
            counts = sample.masks.reshape(len(self.class_names), -1).sum(axis=1)
            for c, count in enumerate(counts):
                pixels[c] += int(count)
                images[c] += int(count > 0)
        return {
            "num_images": len(self.samples),
            "class_names": list(self.class_names),
            "classes": {
                name: {"pixels": pixels[c], "images": images[c]} for c, name in enumerate(self.class_names)
            },
            "sample_names": [s.name for s in self.samples],
            "image_sizes": [list(s.size) for s in self.samples],
        }


def _check_class_names(names: Sequence[str]) -> None:
    if not names:
        raise ValueError("a dataset needs at least one class name")
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"class names must be non-empty strings, got {name!r}")
    duplicates = sorted({n for n in names if list(names).count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate class names {duplicates} in {list(names)}")


def from_items(
    class_names: Sequence[str],
    items: Iterable[tuple[str, np.ndarray, Mapping[str, np.ndarray]]],
) -> SegmentationDataset:
    """Build a dataset from in-memory `(name, image, {class_name: mask})` items.

    Args:
        class_names: the class order of the mask planes.
        items: `image` is anything `to_rgb_uint8` accepts (H×W[×C]); each mask is H×W, bool or
            numeric (non-zero = inside). Classes absent from an item's dict get an empty plane;
            two entries can't name one class because the dict keys are unique.

    Raises:
        ValueError: unknown class names (listed), or a mask whose size differs from its image.
    """
    names = list(class_names)
    _check_class_names(names)
    index = {name: c for c, name in enumerate(names)}
    samples = []
    for name, image, masks_by_class in items:
        unknown = sorted(set(masks_by_class) - set(index))
        if unknown:
            raise ValueError(f"item {name!r}: unknown class names {unknown}; known classes are {names}")
        rgb = to_rgb_uint8(np.asarray(image))
        planes = np.zeros((len(names), *rgb.shape[:2]), dtype=bool)
        for class_name, mask in masks_by_class.items():
            mask = np.asarray(mask)
            if mask.shape != rgb.shape[:2]:
                raise ValueError(
                    f"item {name!r}: mask for class {class_name!r} has shape {mask.shape}, "
                    f"the image is {rgb.shape[0]}×{rgb.shape[1]}"
                )
            planes[index[class_name]] |= mask.astype(bool)
        samples.append(Sample(rgb, planes, str(name)))
    return SegmentationDataset(names, samples)


# --- splits ------------------------------------------------------------------------------------


def _name_order(dataset: SegmentationDataset) -> list[int]:
    """Indices sorted by a hash of the sample name: stable across runs and insertion order."""

    def key(index: int) -> tuple[bytes, int]:
        digest = hashlib.blake2b(dataset[index].name.encode("utf-8"), digest_size=8).digest()
        return digest, index

    return sorted(range(len(dataset)), key=key)


def split_holdout(
    dataset: SegmentationDataset, every: int = 5, min_size: int = 5
) -> tuple[SegmentationDataset, SegmentationDataset]:
    """Deterministic (train, validation) split.

    Samples are ordered by a hash of their name; every `every`-th of them (positions every-1,
    2·every-1, ...) goes to validation, so a sample keeps its side as long as its neighbours in
    hash order do. Below `min_size` samples validation is empty. Both parts keep the dataset's
    original sample order.
    """
    if not isinstance(every, int) or every < 2:
        raise ValueError(f"every must be an int >= 2, got {every!r}")
    if not isinstance(min_size, int) or min_size < 0:
        raise ValueError(f"min_size must be an int >= 0, got {min_size!r}")
    if len(dataset) < min_size:
        return dataset.subset(range(len(dataset))), dataset.subset([])
    order = _name_order(dataset)
    validation = {index for position, index in enumerate(order) if position % every == every - 1}
    return _split(dataset, validation)


def split_fraction(
    dataset: SegmentationDataset, fraction: float, seed: int = 0
) -> tuple[SegmentationDataset, SegmentationDataset]:
    """Random (train, validation) split with round(len × fraction) validation samples.

    With two or more samples both parts get at least one sample; a single sample stays in train.
    The same `seed` and sample names give the same split.
    """
    if not isinstance(fraction, float | int) or not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be between 0 and 1 (exclusive), got {fraction!r}")
    n = len(dataset)
    if n < 2:
        return dataset.subset(range(n)), dataset.subset([])
    n_val = min(max(round(n * fraction), 1), n - 1)
    # Permute the hash order (not the input order) so the split ignores how samples were listed.
    permuted = np.random.default_rng(seed).permutation(n)
    order = _name_order(dataset)
    validation = {order[int(p)] for p in permuted[:n_val]}
    return _split(dataset, validation)


def _split(
    dataset: SegmentationDataset, validation: set[int]
) -> tuple[SegmentationDataset, SegmentationDataset]:
    train = [i for i in range(len(dataset)) if i not in validation]
    return dataset.subset(train), dataset.subset(sorted(validation))
