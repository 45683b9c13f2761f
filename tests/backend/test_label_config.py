import numpy as np
import pytest

from testkit.fake_label_studio import FakeLabelStudio
from testkit.ls_annotations import SEVERAL_CONTROLS_CONFIG, brush_region, polygon_region, rectangle_region
from tests.backend.conftest import (
    BRUSH_CONFIG,
    CHOICES_CONFIG,
    POLYGON_CONFIG,
    brush_task,
    encode,
    ls_id,
    noise_image,
    predict_body,
)
from training.labelstudio.client import LabelStudioSource
from training.labelstudio.export import export_dataset
from training.labelstudio.label_config import BRUSH, KEYPOINT, POLYGON, RECTANGLE, LabelConfigError, parse_label_config


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


def test_the_backend_emits_the_classes_the_export_trains_on(backend, project, shared_server, tmp_path):
    setup = parse_label_config(SEVERAL_CONTROLS_CONFIG)
    size = (48, 64)
    # Training: one annotation with regions of every mask control and every label.
    with FakeLabelStudio() as ls:
        ls.add_project(ls_id(project), SEVERAL_CONTROLS_CONFIG)
        url = ls.add_image(ls_id(project), "a.png", encode(noise_image(*size, seed=3)))
        everything = np.ones(size, bool)
        regions = [brush_region(everything, label) for label in ("a", "b")]
        regions += [polygon_region([(0, 0), (64, 0), (64, 48)], size, label) for label in ("b", "c")]
        regions += [rectangle_region(0, 0, 10, 10, size, label) for label in ("a", "d")]
        ls.add_task(ls_id(project), {"image": url}, [{"result": regions}])
        source = LabelStudioSource(ls.url, ls.legacy_token, retries=0, timeout=5)
        trained = export_dataset(source, project, tmp_path).dataset
    assert trained.class_names == list(setup.labels) == ["a", "b"]
    # Serving: an adapter that knows every label of the config still only emits the classes.
    backend.publish(project, ["a", "b", "c", "d", "e"], seed=1)
    task = brush_task(1, shared_server.add(f"/{project}-classes.png", encode(noise_image(217, 333, 4))), ls_id(project))
    (result,) = backend.client.post("/predict", json=predict_body(project, [task], SEVERAL_CONTROLS_CONFIG)).json()[
        "results"]
    assert result["result"], "a random adapter still predicts some regions"
    for region in result["result"]:
        assert (region["from_name"], region["type"], region["to_name"]) == ("tag", BRUSH, "image")
        assert set(region["value"][BRUSH]) <= set(trained.class_names)
