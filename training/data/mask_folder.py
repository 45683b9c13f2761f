"""Class-id mask folders: a folder of images, a folder of masks matched to them by file stem
(pixel value = class id, 0 = background), and a labels file of ``id name`` lines.

This is what ``python -m training synth`` writes and ``python -m training train --images
--masks --labels`` reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from training.data.dataset import DatasetError, Sample, SegmentationDataset
from training.data.images import IMAGE_SUFFIXES, ImageError, load_image

__all__ = ["load_mask_folder", "read_labels_file"]

MASK_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".bmp"})


def read_labels_file(labels_file: str | Path) -> dict[int, str]:
    """Parse `id name` lines (blank lines and `#` comments ignored) into {id: name}, id 0 dropped.

    Raises:
        DatasetError: naming the file and line number of a bad, duplicate-id or duplicate-name line.
    """
    path = Path(labels_file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read labels file {path}: {exc}") from exc
    labels: dict[int, str] = {}
    seen_names: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.split("#", 1)[0].strip()
        if not stripped:
            continue
        parts = stripped.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DatasetError(f"{path} line {number}: expected '<id> <name>', got {line.strip()!r}")
        class_id, name = int(parts[0]), parts[1].strip()
        if class_id in labels or (class_id == 0 and 0 in seen_names.values()):
            raise DatasetError(f"{path} line {number}: class id {class_id} appears twice")
        if name in seen_names:
            raise DatasetError(f"{path} line {number}: class name {name!r} appears twice")
        seen_names[name] = class_id
        if class_id != 0:  # 0 is background: it has no plane
            labels[class_id] = name
    if not labels:
        raise DatasetError(f"labels file {path} defines no classes (besides background 0)")
    return labels


def _files_by_stem(folder: Path, suffixes: frozenset[str], what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise DatasetError(f"{what} folder {folder} does not exist")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in suffixes:
            continue
        if path.stem in found:
            raise DatasetError(
                f"two {what} files share the stem {path.stem!r}: {found[path.stem]} and {path}"
            )
        found[path.stem] = path
    return found


def _read_class_id_mask(path: Path) -> np.ndarray:
    """H×W int64 class ids from an 8/16-bit gray, palette (indices) or gray-RGB mask file."""
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            array = np.asarray(image)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise DatasetError(f"cannot read mask {path}: {exc}") from exc
    if mode in {"RGB", "RGBA"}:
        channels = array[..., :3]
        if not (np.array_equal(channels[..., 0], channels[..., 1])
                and np.array_equal(channels[..., 0], channels[..., 2])):
            raise DatasetError(f"mask {path} is {mode} with differing channels; expected class ids in gray")
        array = channels[..., 0]
    elif mode not in {"1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N"}:
        raise DatasetError(f"mask {path} has pixel mode {mode!r}; expected 8/16-bit gray or palette")
    return array.astype(np.int64)


def load_mask_folder(
    images_dir: str | Path, masks_dir: str | Path, labels_file: str | Path
) -> SegmentationDataset:
    """Load images plus class-id masks matched by file stem.

    Args:
        images_dir: image files (png, jpg, tif, ...), read with `load_image`.
        masks_dir: one mask per image with the same stem (png/tif/bmp); pixel value = class id,
            0 = background. Masks without an image are ignored.
        labels_file: `id name` lines; classes are ordered by id.

    Returns:
        A dataset with samples in sorted file-name order, named by image stem.

    Raises:
        DatasetError: missing mask (names the image), size mismatch, a mask value not in the
            labels file (names the value and the file), a bad labels line, unreadable files.
    """
    labels = read_labels_file(labels_file)
    class_ids = sorted(labels)
    plane_of = {class_id: c for c, class_id in enumerate(class_ids)}
    images = _files_by_stem(Path(images_dir), IMAGE_SUFFIXES, "image")
    masks = _files_by_stem(Path(masks_dir), MASK_SUFFIXES, "mask")
    if not images:
        raise DatasetError(f"no image files in {images_dir}")
    samples = []
    for stem, image_path in images.items():
        if stem not in masks:
            raise DatasetError(f"no mask for image {image_path.name} in {masks_dir} (expected {stem}.png)")
        try:
            image = load_image(image_path)
        except ImageError as exc:
            raise DatasetError(str(exc)) from exc
        ids = _read_class_id_mask(masks[stem])
        if ids.shape != image.shape[:2]:
            raise DatasetError(
                f"mask {masks[stem]} is {ids.shape[1]}×{ids.shape[0]} (W×H) but image {image_path} "
                f"is {image.shape[1]}×{image.shape[0]}"
            )
        unknown = sorted(int(v) for v in np.unique(ids) if v != 0 and int(v) not in labels)
        if unknown:
            raise DatasetError(f"mask {masks[stem]} has values {unknown} not in labels file {labels_file}")
        planes = np.zeros((len(class_ids), *ids.shape), dtype=bool)
        for class_id, c in plane_of.items():
            planes[c] = ids == class_id
        samples.append(Sample(image, planes, stem))
    return SegmentationDataset([labels[i] for i in class_ids], samples)
