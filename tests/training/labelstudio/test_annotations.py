"""Which annotation of a task is trained on, and its regions as per-class masks."""

from __future__ import annotations

import numpy as np
import pytest

from testkit.ls_annotations import (
    BRUSH_POLYGON_CONFIG,
    box_polygon,
    brush_region,
    iou,
    polygon_region,
    rectangle_region,
    synthetic_scene,
)
from training.labelstudio.annotations import annotation_masks, pick_annotation
from training.labelstudio.label_config import parse_label_config


def test_pick_annotation_latest_non_cancelled_and_ground_truth_first():
    task = {"annotations": [
        {"id": 1, "updated_at": "2026-01-01T10:00:00Z"},
        {"id": 2, "updated_at": "2026-01-03T10:00:00Z", "was_cancelled": True},
        {"id": 3, "updated_at": "2026-01-02T10:00:00Z"},
    ]}
    assert pick_annotation(task)["id"] == 3
    task["annotations"][0]["ground_truth"] = True
    assert pick_annotation(task)["id"] == 1
    assert pick_annotation({"annotations": [{"id": 9, "was_cancelled": True}]}) is None


def test_masks_from_brush_polygon_and_rectangles():
    setup = parse_label_config(BRUSH_POLYGON_CONFIG.replace('smart="true"><Label value="disc"/><Label value="box"/>'
                                                      '</RectangleLabels>', '><Label value="box"/></RectangleLabels>'))
    image, truth = synthetic_scene(3)
    size = image.shape[:2]
    masks = annotation_masks([brush_region(truth["disc"], "disc")], setup, *size)
    assert np.array_equal(masks["disc"], truth["disc"])
    masks = annotation_masks([polygon_region(box_polygon(truth["box"]), size, "box")], setup, *size)
    assert iou(masks["box"], truth["box"]) > 0.97
    rect = annotation_masks([rectangle_region(10, 20, 30, 15, size, "box")], setup, *size)["box"]
    assert rect[20:35, 10:40].all() and rect.sum() == pytest.approx(30 * 15, rel=0.1)
    # 90 degrees clockwise about the top-left corner: the box hangs down-left of (x, y).
    rotated = annotation_masks([rectangle_region(60, 10, 30, 15, size, "box", rotation=90)], setup, *size)["box"]
    expected = np.zeros(size, dtype=bool)
    expected[10:40, 45:60] = True
    assert iou(rotated, expected) > 0.9


def test_unknown_labels_other_images_and_unfinished_polygons_are_ignored():
    setup = parse_label_config(BRUSH_POLYGON_CONFIG)
    mask = np.ones((8, 8), dtype=bool)
    other_image = brush_region(mask, "disc", to_name="other")
    unknown_label = brush_region(mask, "cat")
    line = polygon_region([(1, 1), (5, 5)], (8, 8), "box")
    assert annotation_masks([other_image, unknown_label, line], setup, 8, 8) == {}
