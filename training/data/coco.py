"""COCO instance-segmentation JSON → `SegmentationDataset` (semantic: one plane per category).

Supports polygon, uncompressed-RLE and compressed-RLE segmentations without pycocotools.
COCO conventions used here:

- RLE counts are run lengths over the mask flattened in column-major (Fortran) order,
  starting with a run of zeros (possibly of length 0).
- The compressed form is the string codec of COCO's `maskApi.c`: each count is stored as the
  difference to the count two places earlier (from the third count on), written as 5-bit groups,
  low bits first, each as chr(48 + group), bit 0x20 = "more groups follow", and bit 0x10 of the
  last group = sign.
- Polygon coordinates are in pixel-edge units: (0, 0) is the top-left corner of the top-left
  pixel, so the square 0..10 covers pixels 0..9.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.data.dataset import DatasetError, Sample, SegmentationDataset
from training.data.images import ImageError, load_image
from training.data.polygons import fill_polygon

__all__ = ["load_coco", "decode_rle_string", "rle_to_mask", "polygons_to_mask"]


def decode_rle_string(counts: str | bytes) -> list[int]:
    """Decode COCO's compressed RLE string into run lengths (see module docstring).

    Raises:
        ValueError: characters outside the codec's alphabet, a truncated last count, or a
            negative run length.
    """
    text = counts.decode("ascii") if isinstance(counts, bytes) else counts
    runs: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise ValueError(f"compressed RLE string ends inside a count at character {position}")
            group = ord(text[position]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"invalid character {text[position]!r} at {position} in compressed RLE")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value -= 1 << shift  # sign-extend
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise ValueError(f"compressed RLE decodes to a negative run length {value} (count {len(runs)})")
        runs.append(value)
    return runs


def rle_to_mask(runs: Sequence[int], height: int, width: int) -> np.ndarray:
    """Expand column-major run lengths (zeros first) into an H×W bool mask.

    Raises:
        ValueError: if the runs don't sum to height × width or a run is negative.
    """
    counts = np.asarray(runs, dtype=np.int64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError("RLE counts must be a flat list of non-negative integers")
    if int(counts.sum()) != height * width:
        raise ValueError(
            f"RLE counts sum to {int(counts.sum())}, expected {height}×{width} = {height * width}"
        )
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((width, height)).T.copy()


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons ([x1, y1, x2, y2, ...] in pixel-edge units) into an H×W bool mask.

    A pixel is inside when its centre (col + 0.5, row + 0.5) is inside the polygon (even-odd
    rule); the polygons of one annotation are unioned.

    Raises:
        ValueError: a polygon with fewer than 3 points, an odd number of coordinates, or
            non-numeric / non-finite coordinates.
    """
    mask = np.zeros((height, width), dtype=bool)
    for number, polygon in enumerate(polygons):
        if not isinstance(polygon, list | tuple) or len(polygon) < 6 or len(polygon) % 2:
            raise ValueError(f"polygon {number} must be a flat list of >= 3 x, y pairs, got {polygon!r:.80}")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in polygon):
            raise ValueError(f"polygon {number} has non-numeric coordinates: {polygon!r:.80}")
        points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        if not np.isfinite(points).all():
            raise ValueError(f"polygon {number} has non-finite coordinates: {polygon!r:.80}")
        mask |= fill_polygon(points, height, width)
    return mask


def _segmentation_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, list):
        return polygons_to_mask(segmentation, height, width)
    if isinstance(segmentation, dict) and "counts" in segmentation:
        size = segmentation.get("size")
        if not isinstance(size, list | tuple) or len(size) != 2 or list(size) != [height, width]:
            raise ValueError(
                f"RLE size {size!r} differs from the image's [height, width] = [{height}, {width}]"
            )
        counts = segmentation["counts"]
        runs = decode_rle_string(counts) if isinstance(counts, str | bytes) else counts
        if not isinstance(runs, list | tuple):
            raise ValueError(f"RLE counts must be a string or a list, got {type(counts).__name__}")
        return rle_to_mask(runs, height, width)
    raise ValueError(f"unsupported segmentation {type(segmentation).__name__}: {segmentation!r:.80}")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"cannot read COCO file {path}: {exc}") from exc
    if not isinstance(content, dict):
        raise DatasetError(f"COCO file {path} must hold a JSON object, got {type(content).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(content.get(key), list):
            raise DatasetError(f"COCO file {path} has no list {key!r}")
    return content


def _categories(path: Path, entries: list[Any]) -> tuple[list[str], dict[int, int]]:
    """Class names in category-id order and {category id: plane index}."""
    by_id: dict[int, str] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or not entry.get("name"):
            raise DatasetError(
                f"COCO file {path}: category entry needs an int 'id' and a 'name': {entry!r:.120}"
            )
        if entry["id"] in by_id:
            raise DatasetError(f"COCO file {path}: category id {entry['id']} appears twice")
        by_id[entry["id"]] = str(entry["name"])
    if not by_id:
        raise DatasetError(f"COCO file {path} has no categories")
    ids = sorted(by_id)
    names = [by_id[i] for i in ids]
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise DatasetError(f"COCO file {path}: category names {duplicates} appear under several ids")
    return names, {category_id: plane for plane, category_id in enumerate(ids)}


def load_coco(
    annotation_file: str | Path, images_dir: str | Path | None = None, include_crowd: bool = True
) -> SegmentationDataset:
    """Load a COCO instance JSON as a semantic dataset.

    Args:
        annotation_file: COCO JSON with `images`, `annotations`, `categories`.
        images_dir: folder that `file_name`s are relative to; default: the JSON's folder.
        include_crowd: `iscrowd=1` regions (usually RLE over a group of objects) are still
            pixels of their category, so by default they join its plane; False drops them.

    Returns:
        Classes are the categories in ascending id order; all instances of a category are
        unioned into its plane. Samples follow the order of `images`, named by `file_name`;
        images without annotations get empty planes.

    Raises:
        DatasetError: naming the file and the bad entry (image id, annotation id, category id).
    """
    path = Path(annotation_file)
    content = _read_json(path)
    class_names, plane_of = _categories(path, content["categories"])
    root = Path(images_dir) if images_dir is not None else path.parent
    images: dict[int, tuple[str, np.ndarray]] = {}
    masks: dict[int, np.ndarray] = {}
    for entry in content["images"]:
        image_id, image = _load_entry_image(path, root, entry)
        images[image_id] = (str(entry["file_name"]), image)
        masks[image_id] = np.zeros((len(class_names), *image.shape[:2]), dtype=bool)
    for annotation in content["annotations"]:
        _add_annotation(path, annotation, images, masks, plane_of, include_crowd)
    samples = [Sample(image, masks[image_id], name) for image_id, (name, image) in images.items()]
    return SegmentationDataset(class_names, samples)


def _load_entry_image(path: Path, root: Path, entry: Any) -> tuple[int, np.ndarray]:
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or not entry.get("file_name"):
        raise DatasetError(
            f"COCO file {path}: image entry needs an int 'id' and a 'file_name': {entry!r:.120}"
        )
    image_id = entry["id"]
    try:
        image = load_image(root / str(entry["file_name"]))
    except ImageError as exc:
        raise DatasetError(f"COCO file {path}, image id {image_id}: {exc}") from exc
    declared = (entry.get("height"), entry.get("width"))
    if None not in declared and declared != image.shape[:2]:
        raise DatasetError(
            f"COCO file {path}, image id {image_id} ({entry['file_name']}): declared height×width "
            f"{declared[0]}×{declared[1]} but the file is {image.shape[0]}×{image.shape[1]}"
        )
    return image_id, image


def _add_annotation(
    path: Path,
    annotation: Any,
    images: dict[int, tuple[str, np.ndarray]],
    masks: dict[int, np.ndarray],
    plane_of: dict[int, int],
    include_crowd: bool,
) -> None:
    if not isinstance(annotation, dict):
        raise DatasetError(f"COCO file {path}: annotation must be an object, got {annotation!r:.120}")
    where = f"COCO file {path}, annotation id {annotation.get('id')!r}"
    image_id, category_id = annotation.get("image_id"), annotation.get("category_id")
    if image_id not in masks:
        raise DatasetError(f"{where}: unknown image_id {image_id!r}")
    if category_id not in plane_of:
        raise DatasetError(f"{where}: unknown category_id {category_id!r}; categories are {sorted(plane_of)}")
    if annotation.get("iscrowd", 0) and not include_crowd:
        return
    if "segmentation" not in annotation:
        raise DatasetError(f"{where}: no 'segmentation' (a detection-only file cannot train masks)")
    height, width = images[image_id][1].shape[:2]
    try:
        mask = _segmentation_mask(annotation["segmentation"], height, width)
    except ValueError as exc:
        raise DatasetError(f"{where} (image {images[image_id][0]}): {exc}") from exc
    masks[image_id][plane_of[category_id]] |= mask
