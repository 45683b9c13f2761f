import cv2
import numpy as np
import pytest

from training.drawing import (
    BACKGROUND,
    NEGATIVE_CLICK,
    PALETTE,
    PANEL_GAP,
    POSITIVE_CLICK,
    draw_clicks,
    label_height,
    labelled_row,
    overlay,
    tint,
    write_png,
)
from training.learn.clicks import Click


def noise(height: int = 20, width: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_an_overlay_colours_each_class_and_leaves_the_background():
    image = noise()
    labels = np.zeros((20, 30), np.uint8)
    labels[2:5, 3:9], labels[10:, 20:] = 1, 10  # class 10 cycles back to the palette's second colour
    drawn = overlay(image, labels, opacity=0.25)
    assert np.array_equal(drawn[labels == 0], image[labels == 0])
    for class_id, colour in ((1, PALETTE[0]), (10, PALETTE[1])):
        where = labels == class_id
        expected = (0.75 * image[where] + 0.25 * colour.astype(np.float64)).astype(np.uint8)
        assert np.array_equal(drawn[where], expected)


def test_opacity_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="opacity"):
        tint(noise(), np.ones((20, 30), bool), PALETTE[0], opacity=1.5)


def test_each_clicked_pixel_keeps_its_colour_even_under_a_neighbour():
    panel = np.zeros((40, 40, 3), np.uint8)
    clicks = [Click(10, 10, True), Click(11, 10, False), Click(30, 5, True)]
    draw_clicks(panel, clicks)
    for click in clicks:
        assert tuple(panel[click.y, click.x]) == (POSITIVE_CLICK if click.positive else NEGATIVE_CLICK)
    assert tuple(panel[39, 39]) == (0, 0, 0)  # far from every click: untouched


def test_panels_sit_side_by_side_under_their_labels(tmp_path):
    panels = [noise(seed=k) for k in range(3)]
    row = labelled_row(panels, ["image", "truth", "a label far too long for a panel thirty pixels wide"])
    top = label_height(30)
    assert row.shape == (top + 20, 3 * 30 + 2 * PANEL_GAP, 3)
    for k, panel in enumerate(panels):
        left = k * (30 + PANEL_GAP)
        assert np.array_equal(row[top:, left : left + 30], panel)
        assert (row[:top, left : left + 30] < 128).any()  # the label's dark text
    assert (row[:, 30 : 30 + PANEL_GAP] == BACKGROUND).all()
    written = cv2.cvtColor(cv2.imread(str(write_png(tmp_path / "sub" / "row.png", row))), cv2.COLOR_BGR2RGB)
    assert np.array_equal(written, row)
    with pytest.raises(ValueError, match="panels"):
        labelled_row([panels[0], noise(10, 10)], ["a", "b"])
