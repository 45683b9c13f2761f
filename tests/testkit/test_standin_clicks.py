"""The stand-in's clicks stage (``testkit.standin_clicks``): its click simulation, and its place in the build.

The stage is off by default (it does not reach clicking well within the build's time budget), so the
default recipe, and with it every cached stand-in, is the one from before the stage existed.
"""

from __future__ import annotations

import numpy as np

from testkit.standin import _recipe, build_standin, prompts_path, standin_report
from testkit.standin_clicks import _corrupted, _first_points, _next_points, _noisy_boxes

TINY = {"image_size": 64, "encoder_steps": 2, "decoder_steps": 2, "images": 2, "batch_size": 2}


def _disc(size: int = 32, centre: tuple[int, int] = (12, 12), radius: int = 6) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_the_default_recipe_has_no_clicks_stage_and_the_option_changes_the_recipe():
    plain = _recipe(256, 60, 250, 0, 24, 4)
    assert "clicks" not in plain and _recipe(256, 60, 250, 0, 24, 4, click_steps=0) == plain
    clicked = _recipe(256, 60, 250, 0, 24, 4, click_steps=100)
    assert clicked["clicks"]["steps"] == 100 and {k: v for k, v in clicked.items() if k != "clicks"} == plain


def test_a_first_point_lies_in_its_object_at_the_most_interior_pixel():
    truth = np.stack([_disc(), _disc(centre=(20, 22), radius=4)])
    coords, labels = _first_points(truth, np.random.default_rng(0), interior=1.0)
    assert coords.shape == (2, 1, 2) and labels.tolist() == [[1], [1]]
    # (x, y) input-frame pixels are (column + 0.5, row + 0.5) * 4 of the mask pixel.
    assert coords[:, 0].tolist() == [[50.0, 50.0], [90.0, 82.0]]


def test_a_correction_clicks_the_larger_error_with_its_label():
    truth = _disc()[None]
    rng = np.random.default_rng(0)
    # Nothing predicted: the object is missed, a positive inside it.
    coords, labels = _next_points(np.zeros_like(truth), truth, rng, interior=1.0)
    assert labels.tolist() == [[1]] and truth[0, int(coords[0, 0, 1] // 4), int(coords[0, 0, 0] // 4)]
    # The object and a large blob beside it predicted: a negative in the blob.
    prediction = truth.copy()
    prediction[0, 20:30, 20:30] = True
    coords, labels = _next_points(prediction, truth, rng, interior=0.0)
    row, col = int(coords[0, 0, 1] // 4), int(coords[0, 0, 0] // 4)
    assert labels.tolist() == [[0]] and 20 <= row < 30 and 20 <= col < 30


def test_noisy_boxes_stay_near_the_objects_box():
    boxes = _noisy_boxes(_disc()[None], np.random.default_rng(0))
    exact = np.array([6, 6, 19, 19]) * 4.0  # rows and columns 6..18 inclusive
    assert boxes.shape == (1, 4) and np.abs(boxes[0] - exact).max() <= 20.0


def test_a_corrupted_mask_is_a_near_miss_of_its_object():
    truth = np.stack([_disc(radius=8), _disc(centre=(20, 20), radius=6)])
    for seed in range(20):
        earlier = _corrupted(truth, np.random.default_rng(seed))
        assert earlier.shape == truth.shape and earlier.dtype == bool
        overlap = (earlier & truth).sum((1, 2)) / (earlier | truth).sum((1, 2))
        assert np.all(overlap > 0.1) and np.any(earlier != truth)  # a near miss: neither the object nor nothing


def test_a_build_with_the_clicks_stage_goes_on_from_the_cached_stand_in(tmp_path):
    clicked = build_standin(tmp_path, **TINY, click_steps=2)
    base = build_standin(tmp_path, **TINY)  # built on the way, found in the cache now
    report, base_report = standin_report(clicked), standin_report(base)
    assert report["base"] == base.name and prompts_path(base).is_file() and prompts_path(clicked).is_file()
    assert report["seconds"] > base_report["seconds"] and report["encoder_losses"] == base_report["encoder_losses"]
    clicks = report["clicks"]
    assert clicks["seconds"] > 0 and len(clicks["losses"]) == 2 and report["recipe"]["clicks"]["steps"] == 2
    for family in ("own", "target"):
        scores = clicks[family]
        assert scores["objects"] >= 1 and 0.0 <= scores["iou_at"]["1"] <= 1.0
        assert 1 <= scores["noc85"] <= scores["noc90"] <= 20 and 0 <= scores["nof90"] <= scores["objects"]
    assert 0.0 <= report["held_out_mean_iou"] <= 1.0
