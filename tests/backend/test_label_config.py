import pytest

from backend.label_config import BRUSH, KEYPOINT, POLYGON, RECTANGLE, LabelConfigError, parse_label_config
from tests.backend.conftest import BRUSH_CONFIG, CHOICES_CONFIG, POLYGON_CONFIG


def test_brush_config_with_smart_prompts():
    setup = parse_label_config(BRUSH_CONFIG)
    assert setup.image_name == "image"
    assert setup.image_key == "image"
    assert setup.output.name == "tag"
    assert setup.output.kind == BRUSH
    assert setup.labels == ("cat", "dog", "tree")
    assert [(c.name, c.kind) for c in setup.prompts] == [("kp", KEYPOINT), ("rect", RECTANGLE)]


def test_polygon_config_reads_its_data_key():
    setup = parse_label_config(POLYGON_CONFIG)
    assert (setup.image_name, setup.image_key, setup.output.kind) == ("img", "picture", POLYGON)
    assert setup.labels == ("cat", "dog")


def test_brush_is_preferred_when_both_controls_exist():
    config = """<View><Image name="image" value="$image"/>
      <PolygonLabels name="poly" toName="image"><Label value="a"/></PolygonLabels>
      <BrushLabels name="brush" toName="image"><Label value="a"/><Label value="b"/></BrushLabels></View>"""
    setup = parse_label_config(config)
    assert setup.output.name == "brush"


def test_prompt_label_maps_to_the_output_label_of_the_same_name_else_the_first():
    setup = parse_label_config(BRUSH_CONFIG)
    assert setup.output_label_for("dog") == "dog"
    assert setup.output_label_for("horse") == "cat"
    assert setup.output_label_for(None) == "cat"


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (CHOICES_CONFIG, "BrushLabels> or <PolygonLabels"),
        ("<View><Image name='x' value='$image'/>", "not valid XML"),
        ("", "empty"),
        ("<View><Text name='t' value='$text'/><BrushLabels name='b' toName='t'><Label value='a'/></BrushLabels></View>",
         "no <Image>"),
        ("<View><Image name='x' value='$image'/><BrushLabels name='b' toName='y'><Label value='a'/></BrushLabels>"
         "</View>", "not an <Image>"),
        ("<View><Image name='x' value='$image'/><BrushLabels name='b' toName='x'></BrushLabels></View>",
         "no <Label>"),
    ],
)
def test_unusable_configs_are_refused_with_a_reason(config, words):
    with pytest.raises(LabelConfigError, match=words.replace("<", ".").replace(">", ".")):
        parse_label_config(config)
