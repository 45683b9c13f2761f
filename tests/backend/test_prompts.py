import numpy as np
import pytest

from backend.prompts import PromptError, parse_context
from tests.backend.conftest import keypoint, rectangle


def test_no_context_or_empty_result_is_not_interactive():
    assert parse_context(None) is None
    assert parse_context({}) is None
    assert parse_context({"result": []}) is None


def test_keypoints_missing_is_positive_counts_as_positive():
    prompt = parse_context({"result": [keypoint(10, 20, positive=None), keypoint(50, 50, positive=False)]})
    assert prompt.point_labels == [1, 0]
    assert prompt.label == "cat"
    points = prompt.points_px(200, 100)
    assert np.allclose(points, [[20, 20], [100, 50]])


def test_rectangle_becomes_a_box_in_pixels():
    prompt = parse_context({"result": [rectangle(10, 20, 30, 40, label="horse")]})
    assert prompt.points_px(200, 100) is None
    assert np.allclose(prompt.box_px(200, 100), [20, 20, 80, 60])
    assert prompt.label == "horse"


def test_points_and_box_together_and_other_regions_ignored():
    brush = {"type": "brushlabels", "value": {"rle": [1, 2], "brushlabels": ["cat"]}}
    prompt = parse_context({"result": [brush, keypoint(1, 2), rectangle(0, 0, 10, 10)]})
    assert len(prompt.points_pct) == 1 and prompt.box_pct == (0, 0, 10, 10)


@pytest.mark.parametrize(
    "context",
    [
        {"result": "nope"},
        {"result": [5]},
        {"result": [{"type": "keypointlabels", "value": "x"}]},
        {"result": [{"type": "keypointlabels", "value": {"x": "10", "y": 5}}]},
        {"result": [{"type": "rectanglelabels", "value": {"x": 1, "y": 2, "width": None, "height": 3}}]},
    ],
)
def test_malformed_context_names_the_problem(context):
    with pytest.raises(PromptError, match=r"params\.context\.result"):
        parse_context(context)
