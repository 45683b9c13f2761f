"""Tests for training.data.dataset and training.data.coco on synthetic datasets written to tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data.coco import decode_rle_string, load_coco, polygons_to_mask, rle_to_mask
from training.data.dataset import (
    DatasetError,
    Sample,
    SegmentationDataset,
    from_items,
    load_mask_folder,
    split_fraction,
    split_holdout,
)
from training.data.dataset import load_coco as load_coco_via_data

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


def synthetic_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


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
    assert load_coco_via_data(coco_dir / "ann.json", moved).class_names == ["dog", "cat"]


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


# --- class-id mask folders ---------------------------------------------------------------------


@pytest.fixture
def mask_folder(tmp_path: Path) -> tuple[Path, Path, Path]:
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    labels = tmp_path / "labels.txt"
    labels.write_text("# id name\n0 background\n\n2 road marking\n1 car  # vehicles\n")
    ids = np.zeros((16, 24), np.uint8)
    ids[2:6, 3:9] = 1
    ids[10:, :] = 2
    Image.fromarray(synthetic_image(16, 24, 3)).save(images / "one.png")
    Image.fromarray(ids, "L").save(masks / "one.png")  # 8-bit
    Image.fromarray(synthetic_image(16, 24, 4)).save(images / "two.jpg", quality=95)
    Image.fromarray(ids.astype(np.uint16)[::-1].copy()).save(masks / "two.png")  # 16-bit
    Image.fromarray(synthetic_image(16, 24, 5)).save(images / "three.png")
    Image.fromarray(np.repeat(ids[:, ::-1, None], 3, axis=2)).save(masks / "three.png")  # gray RGB
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(masks / "orphan.png")  # no image: ignored
    np.save(tmp_path / "ids.npy", ids)
    return images, masks, labels


def test_load_mask_folder(mask_folder: tuple[Path, Path, Path], tmp_path: Path) -> None:
    dataset = load_mask_folder(*mask_folder)
    ids = np.load(tmp_path / "ids.npy")
    assert dataset.class_names == ["car", "road marking"]
    assert [s.name for s in dataset] == ["one", "three", "two"]
    one, three, two = dataset
    np.testing.assert_array_equal(one.image, synthetic_image(16, 24, 3))
    np.testing.assert_array_equal(one.masks[0], ids == 1)
    np.testing.assert_array_equal(one.masks[1], ids == 2)
    np.testing.assert_array_equal(two.masks[1], (ids == 2)[::-1])
    np.testing.assert_array_equal(three.masks[0], (ids == 1)[:, ::-1])
    assert two.image.shape == (16, 24, 3)


def test_mask_folder_missing_mask(mask_folder: tuple[Path, Path, Path]) -> None:
    (mask_folder[1] / "two.png").unlink()
    with pytest.raises(DatasetError, match="no mask for image two.jpg"):
        load_mask_folder(*mask_folder)


def test_mask_folder_size_mismatch(mask_folder: tuple[Path, Path, Path]) -> None:
    Image.fromarray(np.zeros((16, 23), np.uint8)).save(mask_folder[1] / "one.png")
    with pytest.raises(DatasetError, match=r"one.png is 23×16 \(W×H\).*24×16"):
        load_mask_folder(*mask_folder)


def test_mask_folder_unknown_value(mask_folder: tuple[Path, Path, Path]) -> None:
    ids = np.zeros((16, 24), np.uint16)
    ids[0, 0] = 300
    Image.fromarray(ids).save(mask_folder[1] / "one.png")
    with pytest.raises(DatasetError, match=r"one.png has values \[300\] not in labels file .*labels.txt"):
        load_mask_folder(*mask_folder)


def test_mask_folder_colour_mask_refused(mask_folder: tuple[Path, Path, Path]) -> None:
    colour = np.zeros((16, 24, 3), np.uint8)
    colour[0, 0] = (1, 2, 1)
    Image.fromarray(colour).save(mask_folder[1] / "one.png")
    with pytest.raises(DatasetError, match="differing channels"):
        load_mask_folder(*mask_folder)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 car\ncar 2\n", "line 2: expected '<id> <name>'"),
        ("1 car\n\n1 bus\n", "line 3: class id 1 appears twice"),
        ("1 car\n2 car\n", "line 2: class name 'car' appears twice"),
        ("-1 car\n", "line 1"),
        ("0 background\n# nothing\n", "defines no classes"),
    ],
)
def test_bad_labels_file(mask_folder: tuple[Path, Path, Path], text: str, message: str) -> None:
    mask_folder[2].write_text(text)
    with pytest.raises(DatasetError, match=message):
        load_mask_folder(*mask_folder)


def test_mask_folder_corrupt_image(mask_folder: tuple[Path, Path, Path]) -> None:
    (mask_folder[0] / "one.png").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="one.png"):
        load_mask_folder(*mask_folder)


def test_mask_folder_exif_rotated_jpeg_matches_displayed_mask(tmp_path: Path) -> None:
    images, masks = tmp_path / "i", tmp_path / "m"
    images.mkdir()
    masks.mkdir()
    (tmp_path / "labels.txt").write_text("1 thing\n")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(synthetic_image(10, 30, 9)).save(images / "r.jpg", exif=exif)
    Image.fromarray(np.ones((30, 10), np.uint8)).save(masks / "r.png")  # drawn on the displayed image
    dataset = load_mask_folder(images, masks, tmp_path / "labels.txt")
    assert dataset[0].image.shape == (30, 10, 3) and dataset[0].masks.all()


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
