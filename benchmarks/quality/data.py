"""The benchmark's images: a labeled pool, a fixed held-out set, and the labeled draws per repeat.

Sources, through the loaders ``training`` already has:

- nothing given, or ``synthetic:target``: the stand-in's *target* scene family
  (``testkit.standin.target_dataset``), which the stand-in never saw (rings, bars, crosses);
- ``synthetic:second``: a second family no tuning has seen (``testkit.second_family``: triangles, stars,
  crescents on clutter), the check that a change tuned on the target family holds elsewhere;
- a mask folder (``images/``, ``masks/`` and a labels file: what ``python -m training synth`` writes),
- a COCO instances JSON (images under ``--images`` or the JSON's folder),
- a Label Studio JSON export (a list of tasks): each task's annotation through
  ``training.labelstudio.annotations``, the label config from ``--label-config`` or, without one, one
  BrushLabels + PolygonLabels config over the labels found in the export; images from ``--images``
  (or paths in the task data that exist on disk).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from training.data.coco import load_coco
from training.data.dataset import DatasetError, SegmentationDataset, from_items, split_fraction
from training.data.images import ImageError, load_image
from training.data.mask_folder import load_mask_folder
from training.labelstudio.annotations import TaskSkipped, annotation_masks, pick_annotation
from training.labelstudio.label_config import parse_label_config

LABELS_FILES = ("labels.txt", "labels")
SYNTHETIC_POOL_SEED = 1000
SYNTHETIC_HELD_OUT_SEED = 2000
SYNTHETIC_FAMILIES = ("synthetic:target", "synthetic:second")


@dataclass
class BenchmarkData:
    """The pool labeled images are drawn from, the fixed held-out set, and where they came from."""

    pool: SegmentationDataset
    held_out: SegmentationDataset
    source: str  # a SYNTHETIC_FAMILIES name or the --data path

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "classes": list(self.pool.class_names), "pool_images": len(self.pool),
                "held_out_images": len(self.held_out),
                "held_out": [s.name for s in self.held_out.samples]}

    def fingerprint(self) -> str:
        """A digest of every image and mask: cells made on other data are not reused."""
        digest = hashlib.sha256(json.dumps(self.pool.class_names).encode())
        for sample in [*self.pool.samples, *self.held_out.samples]:
            digest.update(sample.name.encode())
            digest.update(np.ascontiguousarray(sample.image).tobytes())
            digest.update(np.packbits(sample.masks).tobytes())
        return digest.hexdigest()[:16]


def synthetic_data(pool_images: int, held_out_images: int, size: int, family: str = "synthetic:target"
                   ) -> BenchmarkData:
    """A synthetic family (``SYNTHETIC_FAMILIES``): a pool and a held-out set from disjoint seeds, ``size`` px."""
    if family == "synthetic:target":
        from testkit.standin import target_dataset as dataset
    elif family == "synthetic:second":
        from testkit.second_family import second_dataset as dataset
    else:
        raise DatasetError(f"synthetic family {family!r} is not one of {', '.join(SYNTHETIC_FAMILIES)}")
    return BenchmarkData(dataset(pool_images, size, seed=SYNTHETIC_POOL_SEED),
                         dataset(held_out_images, size, seed=SYNTHETIC_HELD_OUT_SEED), family)


def load_data(path: Path, images: Path | None = None, label_config: Path | None = None) -> SegmentationDataset:
    """A user's dataset from a mask folder, a COCO JSON or a Label Studio JSON export (see the module)."""
    if path.is_dir():
        labels = next((path / name for name in LABELS_FILES if (path / name).is_file()), None)
        if labels is None:
            raise DatasetError(f"mask folder {path} has no labels file ({' or '.join(LABELS_FILES)})")
        return load_mask_folder(images or path / "images", path / "masks", labels)
    if not path.is_file():
        raise DatasetError(f"--data {path} is neither a mask folder nor a JSON file")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read {path} as JSON: {exc}") from exc
    if isinstance(content, dict) and "images" in content and "annotations" in content:
        return load_coco(path, images)
    if isinstance(content, list):
        config = label_config.read_text(encoding="utf-8") if label_config else None
        return label_studio_export(content, images or path.parent, config, path)
    raise DatasetError(f"{path} is neither COCO (images, annotations) nor a Label Studio export (a list of tasks)")


def _config_for(tasks: list[Any]) -> str:
    """A config whose classes are the brush/polygon labels of the export, in first-seen order."""
    labels: dict[str, None] = {}
    names = {"brushlabels": "tag", "polygonlabels": "tag"}
    image, key = "image", "image"
    for task in tasks:
        data = task.get("data") if isinstance(task, dict) else None
        if isinstance(data, dict) and data:
            key = next(iter(data))
        for annotation in (task.get("annotations") or []) if isinstance(task, dict) else []:
            for region in annotation.get("result") or []:
                kind = region.get("type")
                if kind in names:
                    names[kind] = region.get("from_name", names[kind])
                    image = region.get("to_name", image)
                    labels.update(dict.fromkeys((region.get("value") or {}).get(kind) or []))
    if not labels:
        raise DatasetError("the Label Studio export has no brush or polygon labels to benchmark")
    body = "".join(f"<Label value={quoteattr(name)}/>" for name in labels)
    polygon = "" if names["polygonlabels"] == names["brushlabels"] else (
        f"<PolygonLabels name={quoteattr(names['polygonlabels'])} toName={quoteattr(image)}>{body}</PolygonLabels>")
    return (f"<View><Image name={quoteattr(image)} value={quoteattr('$' + key)}/>"
            f"<BrushLabels name={quoteattr(names['brushlabels'])} toName={quoteattr(image)}>{body}</BrushLabels>"
            f"{polygon}</View>")


def _task_image_path(url: str, images: Path) -> Path:
    # Label Studio names uploads "<8 hex>-<original name>"; a user's folder usually has the original.
    name = url.rsplit("/", 1)[-1].split("?", 1)[0]
    for candidate in (Path(url), images / name, images / name.split("-", 1)[-1]):
        if candidate.is_file():
            return candidate
    raise TaskSkipped(f"image {url} not found under {images} (as {name})")


def label_studio_export(tasks: list[Any], images: Path, config: str | None, where: Path | str = "export"
                        ) -> SegmentationDataset:
    """A Label Studio JSON export (list of tasks) as a dataset; tasks without a usable image or
    annotation are left out (an export with none left raises DatasetError)."""
    setup = parse_label_config(config or _config_for(tasks))
    items = []
    for task in tasks:
        annotation = pick_annotation(task) if isinstance(task, dict) else None
        url = ((task.get("data") or {}) if isinstance(task, dict) else {}).get(setup.image_key)
        if annotation is None or not isinstance(url, str):
            continue
        try:
            image = load_image(_task_image_path(url, images))
            masks = annotation_masks(annotation.get("result"), setup, image.shape[0], image.shape[1])
        except (TaskSkipped, ImageError):
            continue
        items.append((f"task-{task.get('id', len(items))}", image, masks))
    if not items:
        raise DatasetError(f"{where}: no task with an annotation and an image found under {images}")
    return from_items(list(setup.labels), items)


def split_user_data(dataset: SegmentationDataset, held_out_images: int, source: str) -> BenchmarkData:
    """A fixed held-out set of ``held_out_images`` (at most half the data), the rest the pool."""
    if len(dataset) < 2:
        raise DatasetError(f"{source}: {len(dataset)} image(s); the benchmark needs at least 2 (pool + held-out)")
    count = max(1, min(held_out_images, len(dataset) // 2))
    pool, held_out = split_fraction(dataset, count / len(dataset), seed=0)
    return BenchmarkData(pool, held_out, source)


def draw_order(pool_size: int, repeat: int, seed: int = 0) -> list[int]:
    """Repeat ``repeat``'s order of the pool: its n labeled images are the first n.

    Nested draws (the 4 images of a repeat include its 2) make a learning curve measure more images,
    not other images; different repeats are different draws.
    """
    return [int(i) for i in np.random.default_rng([seed, repeat]).permutation(pool_size)]
