"""The Label Studio protocol end to end through FastAPI's TestClient, with payloads shaped as LS sends them."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from backend.project_settings import ProjectSettingsStore
from tests.backend.conftest import (
    BRUSH_CONFIG,
    CHOICES_CONFIG,
    POLYGON_CONFIG,
    brush_task,
    encode,
    keypoint,
    ls_id,
    noise_image,
    predict_body,
    rectangle,
    setup_body,
)

UNTRAINED = "samloop-vit_t-256-RANDOM-WEIGHTS-untrained"


def decoded(region: dict) -> np.ndarray:
    h, w = region["original_height"], region["original_width"]
    return decode_rle(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0


@pytest.mark.parametrize("path", ["/", "/health"])
def test_health_says_up_with_model_and_device(backend, path):
    body = backend.client.get(path).json()
    assert body["status"] == "UP"
    assert body["model"] == "samloop-vit_t-256-RANDOM-WEIGHTS"
    assert body["device"] == "cpu" and body["random_weights"] is True
    assert body["precision"] == "fp32" and body["encoder_batch_size"] == 1


def test_setup_returns_untrained_version_before_any_adapter(backend, project):
    response = backend.client.post("/setup", json=setup_body(project))
    assert response.status_code == 200
    assert response.json() == {"model_version": UNTRAINED}


def test_setup_extra_params_as_string_and_as_object(backend, project):
    client = backend.client
    assert client.post("/setup", json=setup_body(project, extra_params='{"split_instances": true}')).status_code == 200
    assert client.get(f"/projects/{project}/settings").json()["settings"]["split_instances"] is True
    assert client.post("/setup", json=setup_body(project, extra_params={"auto_training": False})).status_code == 200
    settings = client.get(f"/projects/{project}/settings").json()["settings"]
    assert settings == {"predictions": True, "auto_training": False, "pinned_version": None, "split_instances": True,
                        "adapter": "decoder", "preencode": True}


@pytest.mark.parametrize(
    ("extra", "words"),
    [("{bad json", "not valid JSON"), ({"colour": 1}, "'colour'"), ({"pinned_version": 99}, "pinned_version 99")],
)
def test_setup_refuses_bad_extra_params_by_name(backend, project, extra, words):
    response = backend.client.post("/setup", json=setup_body(project, extra_params=extra))
    assert response.status_code == 422
    assert words in response.json()["detail"]


def test_setup_refuses_a_config_without_brush_or_polygon(backend, project):
    response = backend.client.post("/setup", json=setup_body(project, config=CHOICES_CONFIG))
    assert response.status_code == 422
    assert "BrushLabels" in response.json()["detail"]


def test_predict_with_a_config_without_masks_answers_an_error_result(backend, project, shared_server):
    url = shared_server.add(f"/{project}.png", encode(noise_image(40, 50)))
    body = predict_body(project, [brush_task(1, url), brush_task(2, url)], config=CHOICES_CONFIG)
    response = backend.client.post("/predict", json=body)
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 2
    assert all(r["result"] == [] and "BrushLabels" in r["error"] for r in results)


def test_batch_without_adapter_is_empty_and_says_untrained(backend, project, shared_server):
    tasks = [brush_task(i, shared_server.add(f"/{project}-{i}.png", encode(noise_image(30, 40, i))), ls_id(project))
             for i in range(3)]
    results = backend.client.post("/predict", json=predict_body(project, tasks)).json()["results"]
    assert [r["model_version"] for r in results] == [UNTRAINED] * 3
    assert all(r["result"] == [] and r["score"] == 0.0 for r in results)


def test_batch_with_adapter_predicts_known_classes_only(backend, project, shared_server):
    # The adapter knows "cat", "dog" and "bird"; the config has "cat", "dog" and "tree".
    version = backend.publish(project, ["bird", "cat", "dog"], seed=1)
    sizes = [(217, 333), (333, 217), (64, 64)]
    tasks = [brush_task(i, shared_server.add(f"/{project}-b{i}.png", encode(noise_image(h, w, i))), ls_id(project))
             for i, (h, w) in enumerate(sizes)]
    response = backend.client.post("/predict", json=predict_body(project, tasks))
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 3
    expected = f"samloop-vit_t-256-RANDOM-WEIGHTS-p{project}-v{version}"
    labels = set()
    for (h, w), result in zip(sizes, results, strict=True):
        assert result["model_version"] == expected
        assert result["result"], "a random adapter still predicts some regions"
        masks = []
        for region in result["result"]:
            assert region["type"] == "brushlabels" and region["from_name"] == "tag" and region["to_name"] == "image"
            assert (region["original_height"], region["original_width"]) == (h, w)
            assert 0.0 <= region["score"] <= 1.0
            labels.update(region["value"]["brushlabels"])
            masks.append(decoded(region))
        # Classes are resolved per pixel: regions of one task never overlap.
        assert sum(m.astype(int) for m in masks).max() == 1
        scores = [r["score"] for r in result["result"]]
        assert result["score"] == pytest.approx(float(np.mean(scores)))
    assert labels <= {"cat", "dog"}


def test_polygon_config_gets_polygons(backend, project, shared_server):
    backend.publish(project, ["cat", "dog"], seed=2)
    url = shared_server.add(f"/{project}-poly.png", encode(noise_image(217, 333, 5)))
    body = predict_body(project, [brush_task(1, url, key="picture")], config=POLYGON_CONFIG)
    (result,) = backend.client.post("/predict", json=body).json()["results"]
    assert result["result"]
    for region in result["result"]:
        assert region["type"] == "polygonlabels" and region["from_name"] == "poly" and region["to_name"] == "img"
        assert region["value"]["polygonlabels"][0] in {"cat", "dog"}
        points = np.array(region["value"]["points"])
        assert points.shape[1] == 2 and len(points) >= 3 and ((points >= 0) & (points <= 100)).all()


def test_split_instances_switch(backend, project, shared_server):
    backend.publish(project, ["cat", "dog"], seed=1)
    url = shared_server.add(f"/{project}-split.png", encode(noise_image(217, 333, 9)))
    body = predict_body(project, [brush_task(1, url)])
    whole = backend.client.post("/predict", json=body).json()["results"][0]["result"]
    backend.client.patch(f"/projects/{project}/settings", json={"split_instances": True})
    split = backend.client.post("/predict", json=body).json()["results"][0]["result"]
    assert len({r["value"]["brushlabels"][0] for r in whole}) == len(whole)  # one region per class
    assert len(split) >= len(whole)
    union = {}
    for region in split:
        name = region["value"]["brushlabels"][0]
        union[name] = union.get(name, 0) | decoded(region)
    for region in whole:  # the instances of a class never add pixels, they only drop speckle
        name = region["value"]["brushlabels"][0]
        assert not (union[name] & ~decoded(region)).any()


def test_corrupt_and_missing_images_fail_alone(backend, project, shared_server):
    backend.publish(project, ["cat", "dog"], seed=3)
    good = shared_server.add(f"/{project}-good.png", encode(noise_image(50, 70)))
    corrupt = shared_server.add(f"/{project}-corrupt.png", encode(noise_image(50, 70))[:200])
    missing = shared_server.url + f"/{project}-missing.png"
    tasks = [brush_task(1, corrupt), brush_task(2, good), brush_task(3, missing),
             {"id": 4, "data": {"text": "no image field"}}, brush_task(5, good)]
    response = backend.client.post("/predict", json=predict_body(project, tasks))
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 5
    assert results[0]["result"] == [] and "task 1" in results[0]["error"]
    assert results[2]["result"] == [] and "404" in results[2]["error"]
    assert results[3]["result"] == [] and "not a URL" in results[3]["error"]
    assert results[1]["result"] and results[4]["result"]
    assert "error" not in results[1]


def test_predictions_switched_off_gives_no_regions(backend, project, shared_server):
    backend.publish(project, ["cat"], seed=4)
    backend.client.post("/setup", json=setup_body(project, extra_params={"predictions": False}))
    url = shared_server.add(f"/{project}-off.png", encode(noise_image(40, 40)))
    results = backend.client.post("/predict", json=predict_body(project, [brush_task(1, url)])).json()["results"]
    assert results[0]["result"] == [] and results[0]["model_version"].endswith("-v1")
    ctx = {"result": [keypoint(50, 50)]}
    results = backend.client.post("/predict", json=predict_body(project, [brush_task(1, url)], context=ctx)).json()
    assert results["results"][0]["result"] == []


def test_predict_reuses_the_config_of_setup_and_of_earlier_requests(backend, project, shared_server):
    backend.publish(project, ["cat", "dog"], seed=5)
    url = shared_server.add(f"/{project}-nosetup.png", encode(noise_image(60, 60)))
    body = predict_body(project, [brush_task(1, url, ls_id(project))])
    assert backend.client.post("/setup", json=setup_body(project, POLYGON_CONFIG)).status_code == 200
    # A request's config is the project's newest one: it replaces what /setup stored.
    assert backend.client.post("/predict", json=body).json()["results"][0]["result"]
    body.pop("label_config")
    (result,) = backend.client.post("/predict", json=body).json()["results"]
    assert result["result"] and result["result"][0]["type"] == "brushlabels"
    # Another process on the same Redis reads the same config.
    assert ProjectSettingsStore(backend.services.redis.client, backend.settings.SAMLOOP_REDIS_PREFIX
                                ).label_config(project) == BRUSH_CONFIG


def test_interactive_keypoints_give_one_mask_with_the_chosen_label(backend, project, shared_server):
    url = shared_server.add(f"/{project}-click.png", encode(noise_image(217, 333, 7)))
    context = {"result": [keypoint(30, 40, label="dog"), keypoint(60, 50, label="dog", positive=None),
                          keypoint(80, 80, label="dog", positive=False)]}
    response = backend.client.post("/predict", json=predict_body(project, [brush_task(1, url)], context=context))
    assert response.status_code == 200
    # Serialised in the request's thread (backend.app._predict), still as JSON.
    assert response.headers["content-type"] == "application/json"
    (result,) = response.json()["results"]
    assert result["model_version"] == UNTRAINED
    assert len(result["result"]) == 1
    (region,) = result["result"]
    assert region["value"]["brushlabels"] == ["dog"] and region["from_name"] == "tag"
    assert decoded(region).shape == (217, 333)
    assert 0.0 <= region["score"] <= 1.0


def test_a_click_on_a_large_photo_answers_at_its_full_size(backend, project, shared_server):
    # IMAGE_SIZE px is all the model needs: the JPEG is decoded at a quarter scale, the mask is not.
    url = shared_server.add(f"/{project}-photo.jpg", encode(noise_image(1100, 1500, 8), "JPEG"), "image/jpeg")
    context = {"result": [keypoint(30, 40, label="dog", width=1500, height=1100)]}
    response = backend.client.post("/predict", json=predict_body(project, [brush_task(1, url)], context=context))
    (region,) = response.json()["results"][0]["result"]
    assert (region["original_height"], region["original_width"]) == (1100, 1500)
    assert decoded(region).shape == (1100, 1500)
    stored = backend.services.models.lookup(backend.services.models.prepare(backend.services.models.untrained),
                                            backend.services.predictions._url_index[(project, url)])
    assert stored.original_size == (1100, 1500) and max(stored.input_size) == backend.settings.SAM_IMAGE_SIZE


def test_interactive_rectangle_label_without_brush_twin_falls_back_to_first_label(backend, project, shared_server):
    backend.publish(project, ["cat", "dog"], seed=6)
    url = shared_server.add(f"/{project}-box.png", encode(noise_image(217, 333, 8)))
    context = {"result": [rectangle(10, 10, 50, 60, label="horse")]}
    (result,) = backend.client.post("/predict", json=predict_body(project, [brush_task(1, url)], context=context)
                                    ).json()["results"]
    assert result["model_version"].endswith("-v1")
    assert [r["value"]["brushlabels"] for r in result["result"]] == [["cat"]]


def test_repeated_clicks_encode_the_image_once(backend, project, shared_server):
    path = f"/{project}-repeat.png"
    url = shared_server.add(path, encode(noise_image(120, 90, 11)))
    models = backend.services.models
    before = models.encoded_on_request
    points, stored = [], []
    for k in range(5):
        points.append(keypoint(10 + 15 * k, 20 + 10 * k))
        # As LS does: the task comes back with what earlier answers stored in it (ignored, not parsed).
        task = {**brush_task(1, url), "predictions": stored, "annotations": [{"id": 1, "result": stored}]}
        response = backend.client.post("/predict", json=predict_body(project, [task], context={"result": points}))
        assert response.status_code == 200, response.text
        stored = response.json()["results"]
        assert len(stored[0]["result"]) == 1
    assert models.encoded_on_request - before == 1
    # Later clicks need neither the download nor the decode: the URL maps to the cached embedding.
    # (Counted for this image alone: other tests' images may still be encoded ahead in the background.)
    assert [r.path for r in shared_server.requests].count(path) == 1


def test_opening_a_task_warms_the_cache_for_the_first_click(backend, project, shared_server):
    url = shared_server.add(f"/{project}-open.png", encode(noise_image(80, 80, 12)))
    models = backend.services.models
    before = models.encoded_on_request
    backend.client.post("/predict", json=predict_body(project, [brush_task(1, url)]))
    assert models.encoded_on_request - before == 1
    backend.client.post("/predict", json=predict_body(project, [brush_task(1, url)],
                                                      context={"result": [keypoint(50, 50)]}))
    assert models.encoded_on_request - before == 1


def test_same_image_under_two_urls_is_encoded_once(backend, project, shared_server):
    backend.publish(project, ["cat"], seed=7)
    data = encode(noise_image(70, 70, 13))
    tasks = [brush_task(i, shared_server.add(f"/{project}-dup{i}.png", data)) for i in range(3)]
    before = backend.services.models.encoded_on_request
    results = backend.client.post("/predict", json=predict_body(project, tasks)).json()["results"]
    assert backend.services.models.encoded_on_request - before == 1
    assert len(results) == 3


def test_versions_lists_per_project_and_union(backend, project):
    other = str(ls_id(project) + 100000)
    backend.publish(project, ["cat"], seed=1)
    backend.publish(project, ["cat"], seed=2)
    backend.publish(other, ["dog"], seed=3)
    own = backend.client.get("/versions", params={"project": project}).json()
    prefix = "samloop-vit_t-256-RANDOM-WEIGHTS"
    assert own["versions"] == [UNTRAINED, f"{prefix}-p{project}-v1", f"{prefix}-p{project}-v2"]
    assert own["active"] == {project: f"{prefix}-p{project}-v2"}
    union = backend.client.get("/versions").json()["versions"]
    assert {f"{prefix}-p{project}-v2", f"{prefix}-p{other}-v1"} <= set(union)
    assert backend.client.get("/versions", params={"project": "x y"}).status_code == 422
