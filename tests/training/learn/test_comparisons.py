import cv2
import numpy as np
import pytest

from training.data.synthetic import synthetic_dataset
from training.drawing import NEGATIVE_CLICK, PANEL_GAP, POSITIVE_CLICK, class_colour, label_height, marker_radius
from training.inference.predictor import Predictor
from training.learn.comparisons import (
    NO_SAM_DECODER,
    clicked_mask,
    model_decoders,
    picture_tasks,
    write_comparisons,
)
from training.model.config import AdapterConfig
from training.model.loading import new_adapter_model

SIZE = 64


@pytest.fixture(scope="module")
def dataset():
    return synthetic_dataset(3, SIZE, seed=5)


def read_rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def panel(picture: np.ndarray, index: int) -> np.ndarray:
    left = index * (SIZE + PANEL_GAP)
    return picture[label_height(SIZE):, left : left + SIZE]


def near_a_click(clicks, radius: int) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    near = np.zeros((SIZE, SIZE), bool)
    for click in clicks:
        near |= (xx - click.x) ** 2 + (yy - click.y) ** 2 <= (radius + 1) ** 2
    return near


def blend(image: np.ndarray, colour: np.ndarray, opacity: float) -> np.ndarray:
    return ((1 - opacity) * image + opacity * colour.astype(np.float64)).astype(np.uint8)


def test_a_picture_shows_image_truth_sam_and_adapter_after_the_same_number_of_clicks(
        tmp_path, random_vit_t, dataset):
    model = new_adapter_model(random_vit_t, SIZE, dataset.class_names)  # the decoder kind keeps SAM's decoder
    chosen = dataset.subset(picture_tasks(dataset, 2))
    embeddings = Predictor(model, precision="fp32").embed([s.image for s in chosen.samples], batch_size=1)
    adapter, sam = model_decoders(model, embeddings, precision="fp32")
    written = write_comparisons(chosen, adapter, sam, tmp_path / "pictures", clicks=3, opacity=0.4)
    assert len(written) == 2
    for comparison, sample in zip(written, chosen.samples, strict=True):
        assert comparison.path.name.endswith("-3clicks.png") and comparison.path.parent == tmp_path / "pictures"
        picture = read_rgb(comparison.path)
        assert picture.shape == (label_height(SIZE) + SIZE, 4 * SIZE + 3 * PANEL_GAP, 3)
        assert np.array_equal(panel(picture, 0), sample.image)
        # The truth panel is coloured exactly on the object's pixels, in its class colour at the opacity asked.
        index = chosen.class_names.index(comparison.class_name)
        truth, colour = sample.masks[index], class_colour(index)
        expected = np.where(truth[..., None], blend(sample.image, colour, 0.4), sample.image)
        assert truth.any() and np.array_equal(panel(picture, 1), expected)
        assert list(comparison.results) == ["SAM", "adapter"]
        assert comparison.results["SAM"].clicks[0] == comparison.results["adapter"].clicks[0]  # the same first click
        for column, result in ((2, comparison.results["SAM"]), (3, comparison.results["adapter"])):
            drawn = panel(picture, column)
            assert 1 <= len(result.clicks) <= 3 and result.clicks[0].positive
            for click in result.clicks:
                assert tuple(drawn[click.y, click.x]) == (POSITIVE_CLICK if click.positive else NEGATIVE_CLICK)
            # Away from the markers, the panel is that decoder's mask after its clicks.
            away = ~near_a_click(result.clicks, marker_radius(SIZE, SIZE))
            mask_drawn = np.where(result.mask[..., None], blend(sample.image, colour, 0.4), sample.image)
            assert np.array_equal(drawn[away], mask_drawn[away])
        assert comparison.to_dict()["decoders"]["SAM"]["clicks"] == len(comparison.results["SAM"].clicks)


def test_an_encoder_adapter_has_no_sam_panel_and_says_so(tmp_path, random_vit_t, dataset):
    model = new_adapter_model(random_vit_t, SIZE, dataset.class_names, AdapterConfig.for_kind("encoder"))
    chosen = dataset.subset(picture_tasks(dataset, 1))
    embeddings = Predictor(model, precision="fp32").embed([chosen[0].image], batch_size=1)
    adapter, sam = model_decoders(model, embeddings, precision="fp32")
    assert sam is None
    (comparison,) = write_comparisons(chosen, adapter, sam, tmp_path, clicks=2)
    picture = read_rgb(comparison.path)
    assert picture.shape[1] == 4 * SIZE + 3 * PANEL_GAP
    faded = (0.3 * chosen[0].image + 0.7 * 255).astype(np.uint8)
    assert np.array_equal(panel(picture, 2), faded)
    assert comparison.results["SAM"] is None and comparison.to_dict()["decoders"]["SAM"] is None
    assert len(comparison.results["adapter"].clicks) <= 2 and "own encoder" in NO_SAM_DECODER


def test_clicking_stops_when_nothing_is_left_to_correct():
    truth = np.zeros((SIZE, SIZE), bool)
    truth[10:30, 10:30] = True
    perfect = clicked_mask(lambda points, labels: truth, truth, clicks=3)
    assert len(perfect.clicks) == 1 and perfect.iou == 1.0
    empty = clicked_mask(lambda points, labels: np.zeros_like(truth), truth, clicks=3)
    assert len(empty.clicks) == 3 and empty.iou == 0.0 and not empty.mask.any()


def test_pictures_go_to_tasks_with_an_object(dataset):
    blank = synthetic_dataset(1, SIZE, seed=5)
    blank.samples[0].masks[:] = False
    assert picture_tasks(blank, 3) == []
    assert picture_tasks(dataset, 2) == [0, 1]
    with pytest.raises(ValueError, match="positive integer"):
        picture_tasks(dataset, 0)
