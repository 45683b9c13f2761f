"""Tests for training.data.coco on COCO files written to tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.training.data.conftest import synthetic_image
from training.data.coco import decode_rle_string, load_coco, polygons_to_mask, rle_to_mask
from training.data.dataset import DatasetError

# --- helpers: an independent COCO RLE encoder --------------------------------------------------


def mask_to_runs(mask: np.ndarray) -> list[int]:
    """Column-major run lengths of a bool mask, starting with a (possibly empty) run of zeros."""
    flat = mask.T.reshape(-1).astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat[0] else runs


def encode_runs(runs: list[int]) -> str:
    """COCO's compressed-RLE string: delta to the count two back, 5-bit groups, chr(48 + group)."""
    chars = []
    for i, count in enumerate(runs):
        value = count - runs[i - 2] if i > 2 else count
        more = True
        while more:
            group = value & 0x1F
            value >>= 5  # arithmetic shift: negative values end at -1
            more = value != -1 if group & 0x10 else value != 0
            chars.append(chr(48 + (group | 0x20 if more else group)))
    return "".join(chars)


# --- COCO RLE codec ----------------------------------------------------------------------------


def test_decode_hand_computed_strings() -> None:
    # "324O": 3, 2, 4 literal; the 4th count is stored as 1 - 2 = -1 (delta to two back).
    assert decode_rle_string("324O") == [3, 2, 4, 1]
    assert decode_rle_string(b"324O") == [3, 2, 4, 1]
    # 100 = 3·32 + 4: low group 4 with the "more" bit (36 → 'T'), then 3.
    assert decode_rle_string("T3") == [100]
    assert encode_runs([3, 2, 4, 1]) == "324O" and encode_runs([100]) == "T3"


@pytest.mark.parametrize("seed", range(8))
def test_rle_roundtrip_random_masks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    height, width = rng.integers(1, 60, size=2)
    density = rng.uniform(0.0, 1.0)
    mask = rng.random((height, width)) < density
    if seed % 2:  # blocky masks produce long runs (multi-group counts and negative deltas)
        mask = np.kron(mask[: height // 8 + 1, : width // 8 + 1], np.ones((8, 8), bool))[:height, :width]
    runs = mask_to_runs(mask)
    assert rle_to_mask(runs, int(height), int(width)).tolist() == mask.tolist()
    decoded = decode_rle_string(encode_runs(runs))
    assert decoded == runs
    np.testing.assert_array_equal(rle_to_mask(decoded, int(height), int(width)), mask)


def test_rle_errors() -> None:
    with pytest.raises(ValueError, match="sum to 5, expected 2×3 = 6"):
        rle_to_mask([2, 3], 2, 3)
    with pytest.raises(ValueError, match="invalid character"):
        decode_rle_string("32 4")
    with pytest.raises(ValueError, match="ends inside a count"):
        decode_rle_string("T")
    with pytest.raises(ValueError, match="negative run length"):
        decode_rle_string("3O")  # second count is not delta-coded: -1 is invalid


def test_polygon_square_covers_pixel_edges() -> None:
    mask = polygons_to_mask([[2, 1, 6, 1, 6, 4, 2, 4]], 8, 8)
    expected = np.zeros((8, 8), bool)
    expected[1:4, 2:6] = True
    np.testing.assert_array_equal(mask, expected)
    # Triangle x + y < 10: pixel centres (c + .5, r + .5) inside ⇔ c + r < 9 → 45 pixels.
    triangle = polygons_to_mask([[0, 0, 10, 0, 0, 10]], 12, 12)
    rows, cols = np.indices((12, 12))
    np.testing.assert_array_equal(triangle, rows + cols < 9)
    # Two parts of one annotation are unioned; parts outside the image are clipped.
    parts = polygons_to_mask([[0, 0, 2, 0, 2, 2, 0, 2], [6, 6, 20, 6, 20, 20, 6, 20]], 8, 8)
    assert parts.sum() == 4 + 4 and parts[7, 7] and parts[1, 1]
    with pytest.raises(ValueError, match="polygon 0"):
        polygons_to_mask([[1, 2, 3, 4]], 8, 8)
    with pytest.raises(ValueError, match="polygon 1 has non-finite"):
        polygons_to_mask([[0, 0, 2, 0, 2, 2], [0, 0, float("nan"), 0, 2, 2]], 8, 8)


# --- COCO files --------------------------------------------------------------------------------


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    """Two 20×30 images; cat (id 7): polygon + uncompressed RLE; dog (id 3): compressed RLE + crowd."""
    folder = tmp_path / "coco"
    (folder / "img").mkdir(parents=True)
    Image.fromarray(synthetic_image(20, 30, 1)).save(folder / "img" / "a.png")
    Image.fromarray(synthetic_image(20, 30, 2)).save(folder / "img" / "b.png")
    cat_rle = np.zeros((20, 30), bool)
    cat_rle[10:15, 20:28] = True
    dog = np.zeros((20, 30), bool)
    dog[2:18, 1:4] = True
    dog[5, 5] = True
    crowd = np.zeros((20, 30), bool)
    crowd[0, :] = True
    content = {
        "images": [
            {"id": 10, "file_name": "img/a.png", "height": 20, "width": 30},
            {"id": 11, "file_name": "img/b.png", "height": 20, "width": 30},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "iscrowd": 0,
             "segmentation": [[0, 0, 4, 0, 4, 3, 0, 3]]},
            {"id": 2, "image_id": 10, "category_id": 7, "iscrowd": 0,
             "segmentation": {"size": [20, 30], "counts": mask_to_runs(cat_rle)}},
            {"id": 3, "image_id": 10, "category_id": 3, "iscrowd": 0,
             "segmentation": {"size": [20, 30], "counts": encode_runs(mask_to_runs(dog))}},
            {"id": 4, "image_id": 10, "category_id": 3, "iscrowd": 1,
             "segmentation": {"size": [20, 30], "counts": encode_runs(mask_to_runs(crowd))}},
        ],
    }
    (folder / "ann.json").write_text(json.dumps(content))
    np.save(folder / "expected_cat.npy", cat_rle)
    np.save(folder / "expected_dog.npy", dog)
    np.save(folder / "expected_crowd.npy", crowd)
    return folder


def test_load_coco_all_segmentation_kinds(coco_dir: Path) -> None:
    dataset = load_coco(coco_dir / "ann.json")
    assert dataset.class_names == ["dog", "cat"]  # category id order: 3, 7
    assert [s.name for s in dataset] == ["img/a.png", "img/b.png"]
    a, b = dataset[0], dataset[1]
    np.testing.assert_array_equal(a.image, synthetic_image(20, 30, 1))
    expected_cat = np.load(coco_dir / "expected_cat.npy")
    expected_cat[0:3, 0:4] = True
    np.testing.assert_array_equal(a.masks[1], expected_cat)
    dog_and_crowd = np.load(coco_dir / "expected_dog.npy") | np.load(coco_dir / "expected_crowd.npy")
    np.testing.assert_array_equal(a.masks[0], dog_and_crowd)
    assert b.masks.shape == (2, 20, 30) and not b.masks.any()


def test_load_coco_crowd_excluded_and_images_dir(coco_dir: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    (coco_dir / "img").rename(tmp_path / "img_moved")
    (moved / "img").parent.mkdir()
    (tmp_path / "img_moved").rename(moved / "img")
    with pytest.raises(DatasetError, match="image id 10"):
        load_coco(coco_dir / "ann.json")
    dataset = load_coco(coco_dir / "ann.json", images_dir=moved, include_crowd=False)
    np.testing.assert_array_equal(dataset[0].masks[0], np.load(coco_dir / "expected_dog.npy"))
    assert load_coco(coco_dir / "ann.json", moved).class_names == ["dog", "cat"]


def _rewrite(coco_dir: Path, edit) -> Path:  # noqa: ANN001 - a callable editing the dict in place
    content = json.loads((coco_dir / "ann.json").read_text())
    edit(content)
    path = coco_dir / "bad.json"
    path.write_text(json.dumps(content))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c["annotations"][0].update(category_id=99), r"annotation id 1: unknown category_id 99"),
        (lambda c: c["annotations"][1].update(image_id=5), r"annotation id 2: unknown image_id 5"),
        (lambda c: c["annotations"][2]["segmentation"].update(size=[30, 20]), r"annotation id 3.*RLE size"),
        (lambda c: c["annotations"][2]["segmentation"].update(counts="T3"), r"annotation id 3.*sum to 100"),
        (lambda c: c["annotations"][0].update(segmentation=[[1, 2]]), r"annotation id 1.*polygon 0"),
        (lambda c: c["annotations"][0].pop("segmentation"), r"annotation id 1: no 'segmentation'"),
        (lambda c: c["images"][0].update(height=21), r"image id 10.*21×30.*20×30"),
        (lambda c: c["categories"].append({"id": 8, "name": "cat"}), r"\['cat'\] appear under several ids"),
        (lambda c: c.pop("categories"), r"no list 'categories'"),
    ],
)
def test_load_coco_errors_name_file_and_entry(coco_dir: Path, edit, message: str) -> None:  # noqa: ANN001
    path = _rewrite(coco_dir, edit)
    with pytest.raises(DatasetError, match=message) as info:
        load_coco(path)
    assert "bad.json" in str(info.value)


def test_load_coco_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(DatasetError, match="broken.json"):
        load_coco(path)
