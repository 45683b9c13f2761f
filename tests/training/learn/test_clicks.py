import json
import math

import cv2
import numpy as np
import pytest
import torch

from training.data.dataset import SegmentationDataset
from training.data.synthetic import SYNTHETIC_CLASSES, synthetic_dataset
from training.inference.predictor import Predictor, PromptPrediction
from training.learn.clicks import (
    Click,
    ObjectTrace,
    compare,
    decoder_for,
    evaluate_clicks,
    first_click,
    next_click,
    number_of_clicks,
    object_masks,
    simulate_object,
    summarize,
)
from training.model.loading import new_adapter_model

SIZE = 64


def disc(cx: int, cy: int, radius: int, size: int = SIZE) -> np.ndarray:
    canvas = np.zeros((size, size), np.uint8)
    cv2.circle(canvas, (cx, cy), radius, 1, -1)
    return canvas.astype(bool)


def rect(x0: int, y0: int, x1: int, y1: int, size: int = SIZE) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


class Scripted:
    """Returns the given masks in turn (the last one again when they run out) and records its calls."""

    def __init__(self, *masks: np.ndarray) -> None:
        self.masks = masks
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        self.calls.append((points.copy(), labels.copy()))
        return self.masks[min(len(self.calls), len(self.masks)) - 1]


# ----- where the clicks go -----------------------------------------------------------------------------


def test_first_click_of_a_disc_is_its_centre():
    click = first_click(disc(37, 22, 12))
    assert click.positive
    assert math.hypot(click.x - 37, click.y - 22) <= 1


def test_first_click_of_a_ring_and_an_l_lies_inside_it():
    ring = np.zeros((SIZE, SIZE), np.uint8)
    cv2.circle(ring, (32, 32), 20, 1, thickness=6)
    ring = ring.astype(bool)
    ell = rect(10, 10, 20, 54) | rect(10, 44, 54, 54)
    for mask in (ring, ell):
        click = first_click(mask)
        assert mask[click.y, click.x]
    # The ring's interior point is in the band, far from the hole's centre.
    click = first_click(ring)
    assert math.hypot(click.x - 32, click.y - 32) > 15


def test_the_image_edge_counts_as_border():
    # A 20 x 20 square against the left edge: without padding its farthest point would sit at x = 0.
    # Its four central pixels tie; the first in row-major order wins.
    assert first_click(rect(0, 10, 20, 30)) == Click(9, 19, True)
    # In the top-left corner a 9 x 9 square's farthest pixel is its centre, 5 px from edge and border.
    assert first_click(rect(0, 0, 9, 9)) == Click(4, 4, True)


def test_equal_maxima_take_the_first_in_row_major_order():
    # A 3 px tall bar: every pixel of its middle row but the two ends is 2 px from the border.
    assert first_click(rect(4, 10, 40, 13)) == Click(5, 11, True)


def test_correction_goes_to_the_farthest_error_pixel_with_the_right_sign():
    truth = disc(20, 20, 10) | rect(44, 40, 56, 52)
    # The missed 12 x 12 square: its centre pixels are 6 px from its border; the first is (49, 45).
    assert next_click(truth, disc(20, 20, 10)) == Click(49, 45, True)
    blob = rect(4, 50, 16, 60)  # 12 x 10 false positive: 5 px deep along x 8..11 of rows 54, 55
    assert next_click(truth, truth | blob) == Click(8, 54, False)
    # A 4 x 4 miss (2 px deep) against the 5 px deep false positive: negative, whatever the areas.
    assert next_click(truth, (truth & ~rect(44, 40, 48, 44)) | blob) == Click(8, 54, False)
    assert next_click(truth, truth) is None


def test_the_deeper_missed_region_wins_over_the_larger_one():
    # Missed: a 60 x 4 bar (240 px, 2 px deep) and a 10 x 10 square (100 px, 5 px deep). The click goes
    # to the square's centre, not into the bar that the largest-component rule picked.
    bar, square = rect(2, 2, 62, 6), rect(40, 30, 50, 40)
    assert next_click(bar | square, np.zeros((SIZE, SIZE), bool)) == Click(44, 34, True)
    # The same with a false positive beside them: the deeper of the two error masks sets the sign.
    deep_extra = rect(0, 50, 14, 64)  # 14 x 14 in the corner: 7 px deep
    assert next_click(bar | square, deep_extra) == Click(6, 56, False)


def test_equal_maximum_distances_go_negative():
    # A 4 x 4 miss in the corner and a 4 x 4 false positive: both 2 px deep. RITM clicks negative.
    two = rect(0, 0, 4, 4) | rect(30, 30, 34, 34)
    assert next_click(two, (two & ~rect(0, 0, 4, 4)) | rect(50, 50, 54, 54)) == Click(51, 51, False)
    # One pixel deeper on the missed side and it is positive.
    three = rect(0, 0, 6, 6) | rect(30, 30, 34, 34)
    assert next_click(three, (three & ~rect(0, 0, 6, 6)) | rect(50, 50, 54, 54)) == Click(2, 2, True)


def test_a_clicked_pixel_is_never_clicked_again():
    truth = rect(10, 10, 19, 19)  # 9 x 9: its centre (14, 14) is the only pixel 5 px deep
    empty = np.zeros((SIZE, SIZE), bool)
    assert next_click(truth, empty) == Click(14, 14, True)
    # Clicked already: the first of the 4 px deep ring around it.
    assert next_click(truth, empty, [Click(14, 14, True)]) == Click(13, 13, True)
    assert next_click(truth, truth & ~rect(0, 0, 11, 11), [Click(10, 10, True)]) is None  # the only miss
    with pytest.raises(ValueError, match="outside"):
        next_click(truth, empty, [Click(SIZE, 0, True)])


def test_no_click_is_none_and_shapes_are_checked():
    with pytest.raises(ValueError, match="non-empty"):
        first_click(np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="truth"):
        next_click(np.zeros((8, 8), bool), np.zeros((8, 9), bool))


# ----- the click loop and its metrics ---------------------------------------------------------------------


def test_scripted_session_gives_hand_computed_iou_and_noc():
    big, square = disc(24, 24, 12), rect(44, 40, 56, 52)
    truth = big | square
    blob = rect(2, 50, 12, 58)  # 80 px of false positive
    predict = Scripted(big, truth | blob, truth)
    trace = simulate_object(predict, truth, max_clicks=20, report_clicks=(1, 3, 5))

    iou1, iou2 = iou(big, truth), iou(truth | blob, truth)
    assert 0.7 < iou1 < 0.85 <= iou2 < 0.9  # the script is built so NoC@85 = 2 and NoC@90 = 3
    assert trace.ious[:3] == pytest.approx([iou1, iou2, 1.0])
    assert trace.ious[3:] == [1.0] * 17  # the prediction is the truth: no error left, IoU carried
    assert len(trace.ious) == 20
    assert trace.noc(0.85) == 2 and trace.noc(0.90) == 3

    # Every round asks with all clicks so far: centre of the disc, the missed square (+), the blob (-).
    assert len(predict.calls) == 3
    points, labels = predict.calls[-1]
    assert labels.tolist() == [1, 1, 0]
    assert math.hypot(points[0][0] - 24, points[0][1] - 24) <= 1
    assert square[int(points[1][1]), int(points[1][0])] and blob[int(points[2][1]), int(points[2][0])]
    assert predict.calls[1][0].tolist() == points[:2].tolist()
    assert [c.positive for c in trace.clicks] == [True, True, False]


def test_never_good_enough_counts_max_clicks():
    truth = disc(32, 32, 16)
    half = truth & rect(0, 0, 32, SIZE)
    predict = Scripted(half)
    trace = simulate_object(predict, truth, max_clicks=7, report_clicks=(1, 3))
    assert len(predict.calls) == 7  # IoU stays under 0.90: every click of the budget is used
    # The model ignores the clicks, so each correction goes to the next farthest unclicked pixel.
    assert len(set((c.x, c.y) for c in trace.clicks)) == 7
    assert all(c.positive and truth[c.y, c.x] and not half[c.y, c.x] for c in trace.clicks[1:])
    assert trace.failed(0.90) and trace.failed(0.85)
    assert trace.ious == pytest.approx([iou(half, truth)] * 7)
    assert trace.noc(0.85) == trace.noc(0.90) == 7
    assert number_of_clicks([0.2, 0.5], 0.9) == 2 and number_of_clicks([0.2, 0.95, 0.1], 0.9) == 2


def test_clicking_continues_to_the_report_clicks_then_stops_at_090():
    truth = disc(32, 32, 16)
    nearly = truth | rect(0, 0, 3, 3)  # IoU ~0.99 with a false-positive speck left to click on
    predict = Scripted(nearly)
    trace = simulate_object(predict, truth, max_clicks=20, report_clicks=(1, 3, 5))
    assert len(predict.calls) == 5
    assert trace.noc(0.85) == trace.noc(0.90) == 1
    # Got good, then worse at click 2, good again at click 3: IoU is measured while below 0.90.
    wobbly = Scripted(truth | rect(0, 0, 3, 3), rect(0, 0, 10, 10), truth | rect(60, 60, 62, 62))
    trace = simulate_object(wobbly, truth, max_clicks=20, report_clicks=(1,))
    assert len(wobbly.calls) == 1
    trace = simulate_object(Scripted(rect(0, 0, 10, 10), truth | rect(0, 0, 3, 3)), truth, 20, (1,))
    assert trace.noc(0.90) == 2 and trace.ious[2:] == [trace.ious[1]] * 18


class RecordingPredictor:
    """Stands in for a Predictor: answers the given masks in turn, each with low-res logits filled with its
    call number, and records the mask input of every call."""

    def __init__(self, *masks: np.ndarray) -> None:
        self.masks = masks
        self.mask_inputs: list[torch.Tensor | None] = []
        self.answers: list[PromptPrediction] = []

    def predict_prompt(self, embedding, points, point_labels, box=None, class_name=None, decoder=None,
                       mask_input=None) -> PromptPrediction:
        self.mask_inputs.append(mask_input)
        call = len(self.mask_inputs)
        mask = self.masks[min(call, len(self.masks)) - 1]
        self.answers.append(PromptPrediction(mask, 0.5, torch.full((1, 8, 8), float(call))))
        return self.answers[-1]


def test_each_click_after_the_first_gets_the_previous_low_res_logits():
    truth = disc(32, 32, 16)
    half = truth & rect(0, 0, 32, SIZE)
    fake = RecordingPredictor(half, half | rect(32, 0, 40, SIZE), truth)
    trace = simulate_object(decoder_for(fake, None, "a"), truth, max_clicks=20, report_clicks=(1, 3))
    assert len(fake.mask_inputs) == 3 and trace.noc(0.90) == 3
    assert fake.mask_inputs[0] is None  # a first click has no mask prompt
    assert fake.mask_inputs[1] is fake.answers[0].low_res and float(fake.mask_inputs[1].max()) == 1.0
    assert fake.mask_inputs[2] is fake.answers[1].low_res and float(fake.mask_inputs[2].max()) == 2.0
    # A fresh decoder for the next object starts without the last object's mask.
    decoder_for(fake, None)(np.array([[5.0, 5.0]], np.float32), np.array([1]))
    assert fake.mask_inputs[3] is None


def test_nof_counts_objects_that_never_reach_090():
    reached_at_20 = ObjectTrace([], [0.5] * 19 + [0.95])
    never = ObjectTrace([], [0.86] * 20)
    quick = ObjectTrace([], [0.95] * 20)
    summary = summarize([reached_at_20, never, quick], (1,))
    # RITM's ">=20" column would count the first one too; it did reach 0.90, so it is no failure.
    assert summary["nof90"] == 1 and [t.failed(0.90) for t in (reached_at_20, never, quick)] == [False, True, False]
    assert summary["noc90"] == pytest.approx((20 + 20 + 1) / 3)
    assert summary["noc85"] == pytest.approx((20 + 1 + 1) / 3)
    assert summary["iou_at"] == {"1": pytest.approx((0.5 + 0.86 + 0.95) / 3)}
    assert summarize([], (1,)) == {"objects": 0, "iou_at": {"1": None}, "noc85": None, "noc90": None, "nof90": 0}


def test_click_options_are_checked():
    truth = disc(32, 32, 10)
    with pytest.raises(ValueError, match="report_clicks"):
        simulate_object(Scripted(truth), truth, max_clicks=3, report_clicks=(1, 5))
    with pytest.raises(ValueError, match="max_clicks"):
        simulate_object(Scripted(truth), truth, max_clicks=0)
    with pytest.raises(ValueError, match="mask"):
        simulate_object(Scripted(np.zeros((SIZE, 8), bool)), truth)


def test_objects_per_class_or_per_instance_skip_specks():
    masks = np.stack([disc(15, 15, 8) | disc(45, 45, 8), rect(0, 60, 3, 63), np.zeros((SIZE, SIZE), bool)])
    names = ["a", "b", "c"]
    assert [n for n, _ in object_masks(masks, names)] == ["a"]  # 9-px "b" is under min_area 16
    assert [n for n, _ in object_masks(masks, names, min_area=9)] == ["a", "b"]
    pieces = object_masks(masks, names, instances=True)
    assert [n for n, _ in pieces] == ["a", "a"]
    assert not (pieces[0][1] & pieces[1][1]).any() and ((pieces[0][1] | pieces[1][1]) == masks[0]).all()


# ----- compare ------------------------------------------------------------------------------------------------


def _result(noc90: float, iou1: float, objects: int = 4) -> dict:
    return {"objects": objects, "max_clicks": 20, "iou_at": {"1": iou1}, "noc90": noc90}


def test_compare_prefers_fewer_clicks_then_the_better_first_click():
    assert compare(_result(3.0, 0.5), _result(4.0, 0.9))
    assert not compare(_result(4.0, 0.9), _result(3.0, 0.5))
    assert compare(_result(3.0, 0.6), _result(3.0, 0.5))
    assert not compare(_result(3.0, 0.5), _result(3.0, 0.5))  # a tie keeps the base
    assert not compare({**_result(0, 0), "noc90": None, "objects": 0}, {**_result(0, 0), "noc90": None, "objects": 0})
    with pytest.raises(ValueError, match="objects"):
        compare(_result(3.0, 0.5, objects=3), _result(4.0, 0.5))
    with pytest.raises(ValueError, match="1 click"):
        compare({**_result(3.0, 0.5), "iou_at": {"3": 0.5}}, _result(4.0, 0.5))


# ----- end to end with a real tiny model ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_predictor(random_vit_t):
    # One thread: the test machine's cores are shared, and a descheduled second thread stalls every op.
    return Predictor(new_adapter_model(random_vit_t, 128, SYNTHETIC_CLASSES), precision="fp32", threads=1)


def test_evaluate_clicks_with_a_tiny_vit_t(tiny_predictor, monkeypatch):
    dataset = synthetic_dataset(2, 128, seed=5)
    predictor = tiny_predictor
    embedded = []
    embed = predictor.embed

    def counting_embed(images, *args, **kwargs):
        embedded.extend(image.tobytes() for image in images)
        return embed(images, *args, **kwargs)

    monkeypatch.setattr(predictor, "embed", counting_embed)
    result = evaluate_clicks(predictor, dataset, max_clicks=5, report_clicks=(1, 3))

    json.dumps(result)
    with_objects = [s for s in dataset.samples if object_masks(s.masks, dataset.class_names)]
    assert len(embedded) == len(set(embedded)) == len(with_objects) == result["images"]
    expected = sum(len(object_masks(s.masks, dataset.class_names)) for s in dataset.samples)
    assert result["objects"] == expected > 0 and result["max_clicks"] == 5
    assert set(result["iou_at"]) == {"1", "3"}
    assert all(0.0 <= v <= 1.0 for v in result["iou_at"].values())
    assert 1.0 <= result["noc85"] <= result["noc90"] <= 5.0
    assert 0 <= result["nof90"] <= result["objects"]
    assert sum(c["nof90"] for c in result["per_class"].values()) == result["nof90"]
    assert sum(c["objects"] for c in result["per_class"].values()) == expected
    assert set(result["per_class"]) <= set(dataset.class_names)

    # The same embeddings given back: nothing is encoded again, and the same decoder answers the same.
    embeddings = [embed([s.image])[0] for s in dataset.samples]
    again = evaluate_clicks(predictor, dataset, max_clicks=5, report_clicks=(1, 3), embeddings=embeddings)
    assert len(embedded) == len(with_objects)
    assert again == result
    assert not compare(again, result)  # a tie keeps the base


def test_the_previous_logits_reach_a_real_decoder(tiny_predictor):
    image = synthetic_dataset(1, 128, seed=3).samples[0].image
    embedding = tiny_predictor.embed([image])[0]
    one, two = np.array([[40.0, 30.0]], np.float32), np.array([[40.0, 30.0], [90.0, 90.0]], np.float32)
    first = tiny_predictor.predict_prompt(embedding, one, np.array([1]), class_name="disc")
    fed = tiny_predictor.predict_prompt(embedding, two, np.array([1, 0]), class_name="disc",
                                        mask_input=first.low_res)
    plain = tiny_predictor.predict_prompt(embedding, two, np.array([1, 0]), class_name="disc")
    assert first.low_res.shape == (1, 32, 32)  # 4G x 4G at 128 px
    assert not torch.allclose(fed.low_res, plain.low_res)  # SAM 1 uses an explicit mask prompt too
    predict = decoder_for(tiny_predictor, embedding, "disc")
    predict(one, np.array([1]))
    assert np.array_equal(predict(two, np.array([1, 0])), fed.mask)


def test_evaluate_clicks_checks_the_embedding_count(tiny_predictor):
    dataset = SegmentationDataset(SYNTHETIC_CLASSES, [])
    with pytest.raises(ValueError, match="embeddings"):
        evaluate_clicks(tiny_predictor, dataset, embeddings=[None])
    empty = evaluate_clicks(tiny_predictor, dataset)
    assert empty["objects"] == 0 and empty["noc90"] is None and empty["per_class"] == {}
