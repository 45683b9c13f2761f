"""Tests for training.data.mask_folder on class-id mask folders written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.training.data.conftest import synthetic_image
from training.data.dataset import DatasetError
from training.data.mask_folder import load_mask_folder

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
