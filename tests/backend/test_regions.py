import cv2
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from backend.regions import encode_brush, instances, mask_polygons, mask_regions, task_score
from tests.backend.conftest import BRUSH_CONFIG, POLYGON_CONFIG
from training.labelstudio.label_config import parse_label_config


def blob_mask(height: int, width: int) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    cv2.circle(mask.view(np.uint8), (width // 3, height // 2), min(height, width) // 5, 1, -1)
    mask[2:9, width - 40 : width - 3] = True
    return mask


def decode_brush(rle: list[int], height: int, width: int) -> np.ndarray:
    return decode_rle(rle).reshape(height, width, 4)[:, :, 3] > 0


@pytest.mark.parametrize(("height", "width"), [(217, 333), (333, 217), (1, 17), (101, 99)])
def test_brush_rle_round_trips_at_odd_sizes(height, width):
    rng = np.random.default_rng(height * width)
    mask = rng.random((height, width)) > 0.7
    decoded = decode_brush(encode_brush(mask), height, width)
    assert decoded.shape == (height, width)
    assert np.array_equal(decoded, mask)


def test_brush_region_matches_label_studio_format():
    setup = parse_label_config(BRUSH_CONFIG)
    mask = blob_mask(217, 333)
    (region,) = mask_regions(mask, "dog", 0.8, setup)
    assert region["from_name"] == "tag" and region["to_name"] == "image" and region["type"] == "brushlabels"
    assert (region["original_width"], region["original_height"]) == (333, 217)
    assert region["value"]["format"] == "rle" and region["value"]["brushlabels"] == ["dog"]
    assert region["score"] == pytest.approx(0.8)
    assert np.array_equal(decode_brush(region["value"]["rle"], 217, 333), mask)


def test_split_instances_gives_one_brush_region_per_component():
    setup = parse_label_config(BRUSH_CONFIG)
    mask = blob_mask(217, 333)
    regions = mask_regions(mask, "cat", 0.5, setup, split=True)
    assert len(regions) == 2
    parts = [decode_brush(r["value"]["rle"], 217, 333) for r in regions]
    assert np.array_equal(parts[0] | parts[1], mask)
    assert not (parts[0] & parts[1]).any()


def test_speckle_is_not_a_region():
    mask = np.zeros((50, 60), bool)
    mask[10, 10] = mask[30, 40:43] = True
    assert instances(mask) == []
    assert mask_regions(mask, "cat", 0.9, parse_label_config(BRUSH_CONFIG)) == []


def test_polygons_are_percent_coordinates_that_cover_the_mask():
    height, width = 217, 333
    mask = blob_mask(height, width)
    setup = parse_label_config(POLYGON_CONFIG)
    regions = mask_regions(mask, "cat", 0.7, setup)
    assert len(regions) == 2
    assert all(r["type"] == "polygonlabels" and r["value"]["polygonlabels"] == ["cat"] for r in regions)
    drawn = np.zeros((height, width), np.uint8)
    for region in regions:
        points = np.array(region["value"]["points"])
        assert (points >= 0).all() and (points <= 100).all()
        pixels = np.round(points / 100 * [width, height] - 0.5).astype(np.int32)
        cv2.fillPoly(drawn, [pixels], 1)
    iou = (drawn.astype(bool) & mask).sum() / (drawn.astype(bool) | mask).sum()
    assert iou > 0.9


def test_mask_polygons_drops_tiny_outlines():
    mask = np.zeros((40, 40), bool)
    mask[5, 5] = True
    assert mask_polygons(mask) == []


def test_task_score_is_the_mean_region_confidence():
    assert task_score([]) == 0.0
    assert task_score([0.2, 0.4]) == pytest.approx(0.3)
