"""The one label-config rule: the output control's labels are the classes; every mask control on
that image gives training masks, but only for those classes."""

from __future__ import annotations

import numpy as np
import pytest

from testkit.ls_annotations import (
    BRUSH_POLYGON_CONFIG,
    SEVERAL_CONTROLS_CONFIG,
    brush_region,
    polygon_region,
    rectangle_region,
)
from training.labelstudio.annotations import annotation_masks
from training.labelstudio.label_config import BRUSH, POLYGON, RECTANGLE, LabelConfigError, parse_label_config

# No brush: the polygon is the output; the rectangle overlaps it in y and adds z.
POLYGON_AND_RECTANGLE = """<View>
  <Image name="photo" value="$url"/>
  <RectangleLabels name="rect" toName="photo"><Label value="y"/><Label value="z"/></RectangleLabels>
  <PolygonLabels name="poly" toName="photo"><Label value="x"/><Label value="y"/></PolygonLabels>
</View>"""
# Controls on another image are not the chosen image's.
TWO_IMAGES = """<View>
  <Image name="left" value="$left"/>
  <Image name="right" value="$right"/>
  <PolygonLabels name="poly" toName="left"><Label value="p"/></PolygonLabels>
  <BrushLabels name="tag" toName="right"><Label value="q"/><Label value="r"/></BrushLabels>
  <RectangleLabels name="rect" toName="left"><Label value="q"/></RectangleLabels>
</View>"""


def sources(setup) -> dict[str, str]:
    return {control.name: control.kind for control in setup.mask_sources}


@pytest.mark.parametrize(("config", "image", "output", "classes", "mask_sources"), [
    (SEVERAL_CONTROLS_CONFIG, "image", ("tag", BRUSH), ("a", "b"), {"poly": POLYGON, "tag": BRUSH, "rect": RECTANGLE}),
    (POLYGON_AND_RECTANGLE, "photo", ("poly", POLYGON), ("x", "y"), {"rect": RECTANGLE, "poly": POLYGON}),
    (TWO_IMAGES, "right", ("tag", BRUSH), ("q", "r"), {"tag": BRUSH}),
])
def test_classes_are_the_output_controls_labels(config, image, output, classes, mask_sources):
    setup = parse_label_config(config)
    assert setup.image_name == image
    assert (setup.output.name, setup.output.kind) == output
    assert setup.labels == classes
    assert sources(setup) == mask_sources


def test_training_masks_come_from_every_mask_control_but_only_for_the_classes():
    setup = parse_label_config(SEVERAL_CONTROLS_CONFIG)
    size = (40, 60)
    brush_a = np.zeros(size, bool)
    brush_a[:10, :10] = True
    regions = [
        brush_region(brush_a, "a"),
        polygon_region([(20, 0), (30, 0), (30, 10), (20, 10)], size, "b"),
        polygon_region([(40, 0), (50, 0), (50, 10), (40, 10)], size, "c"),  # not a class: ignored
        rectangle_region(0, 20, 10, 10, size, "a"),
        rectangle_region(20, 20, 10, 10, size, "d"),  # not a class: ignored
        rectangle_region(40, 20, 10, 10, size, "e", from_name="smart_rect"),  # a prompt, not a mask
    ]
    masks = annotation_masks(regions, setup, *size)
    assert set(masks) == {"a", "b"} <= set(setup.labels)
    expected_a = brush_a.copy()
    expected_a[20:30, 0:10] = True
    assert np.array_equal(masks["a"], expected_a)
    assert masks["b"].sum() == 100 and masks["b"][0:10, 20:30].all()


def test_schema_takes_mask_controls_and_skips_smart_prompts():
    setup = parse_label_config(BRUSH_POLYGON_CONFIG)
    assert setup.image_name == "image" and setup.image_key == "image"
    assert sources(setup) == {"tag": "brushlabels", "poly": "polygonlabels"}
    assert list(setup.labels) == ["disc", "box"]


def test_plain_rectangles_are_mask_sources_and_configs_without_brush_or_polygon_fail():
    rectangle = '<RectangleLabels name="r" toName="img"><Label value="car"/></RectangleLabels>'
    brush = '<BrushLabels name="b" toName="img"><Label value="car"/></BrushLabels>'
    config = f'<View><Image name="img" value="$url"/>{brush}{rectangle}</View>'
    assert sources(parse_label_config(config)) == {"b": "brushlabels", "r": "rectanglelabels"}
    # Rectangles alone give no output control: nothing the backend could emit, so nothing to train.
    with pytest.raises(LabelConfigError, match="no BrushLabels"):
        parse_label_config(config.replace(brush, ""))
    with pytest.raises(LabelConfigError, match="no BrushLabels"):
        parse_label_config('<View><Image name="i" value="$i"/><Choices name="c" toName="i"><Choice value="a"/>'
                           '</Choices></View>')
