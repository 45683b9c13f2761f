"""The backend on SAM 2.1 tiny (random weights, 256 px): clicks, boxes and batch predictions at the displayed
image size, for EXIF-turned, gray and RGBA images; a second click of a region feeds the first one's mask back;
once warm, clicks run the compiled decoder and /health says so."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from tests.backend.conftest import (
    brush_task,
    encode,
    keypoint,
    noise_image,
    predict_body,
    rectangle,
    start_backend,
)
from tests.backend.test_images import exif_rotated_jpeg, smooth_image

SAM2 = "sam2.1_hiera_t"


@pytest.fixture(scope="module")
def sam2_backend(tmp_path_factory, module_redis_prefix):
    # COMPILE_DECODER on, as by default: SAM 2.1's decoder compiles in the background while the tests below
    # click eagerly; the last test waits for it.
    app, stop = start_backend(tmp_path_factory.mktemp("sam2"), module_redis_prefix, SAM_MODEL=SAM2,
                              COMPILE_DECODER=True)
    yield app
    stop()


def _mask(region: dict, height: int, width: int) -> np.ndarray:
    return decode_rle(region["value"]["rle"]).reshape(height, width, 4)[:, :, 3] > 0


def test_the_backend_runs_sam2(sam2_backend):
    assert sam2_backend.services.models.base.model_type == SAM2


def test_a_click_on_an_exif_turned_image_comes_out_upright(sam2_backend, project, shared_server):
    display = smooth_image(217, 333)
    url = shared_server.add(f"/{project}-sam2-exif.jpg", exif_rotated_jpeg(display), "image/jpeg")
    context = {"result": [keypoint(10, 12, width=333, height=217)]}
    (result,) = sam2_backend.client.post("/predict", json=predict_body(project, [brush_task(1, url)],
                                                                       context=context)).json()["results"]
    for region in result["result"]:
        assert (region["original_width"], region["original_height"]) == (333, 217)
        assert _mask(region, 217, 333).shape == (217, 333)


def test_a_second_click_feeds_the_first_mask_back(sam2_backend, project, shared_server):
    url = shared_server.add(f"/{project}-sam2-clicks.png", encode(noise_image(120, 160)))
    first = [keypoint(30, 40, width=160, height=120)]
    second = [*first, keypoint(70, 60, positive=False, width=160, height=120)]
    for context in ({"result": first}, {"result": second}, {"result": [rectangle(10, 10, 50, 40, width=160,
                                                                                   height=120)]}):
        response = sam2_backend.client.post("/predict", json=predict_body(project, [brush_task(2, url)],
                                                                          context=context))
        assert response.status_code == 200 and "error" not in response.json()["results"][0]
    live = next(iter(sam2_backend.services.models._live.values()))
    assert live.predictor.click_memory is not None and len(live.predictor.click_memory._entries) >= 2


@pytest.mark.parametrize(
    ("name", "array"),
    [
        ("gray8", np.arange(37 * 41, dtype=np.uint32).reshape(37, 41).astype(np.uint8)),
        ("rgba", np.dstack([noise_image(37, 41), np.full((37, 41), 128, np.uint8)])),
    ],
)
def test_batch_predictions_come_out_at_the_image_size(sam2_backend, project, shared_server, name, array):
    sam2_backend.publish(project, ["cat", "dog"], seed=1)
    url = shared_server.add(f"/{project}-sam2-{name}.png", encode(array))
    body = predict_body(project, [brush_task(1, url)])
    (result,) = sam2_backend.client.post("/predict", json=body).json()["results"]
    assert "error" not in result and "sam2.1_hiera_t" in result["model_version"]
    for region in result["result"]:
        assert (region["original_width"], region["original_height"]) == (41, 37)


# Last in the module: the background compile (nice 10) has had the other tests' time to finish.
def test_health_says_sam2_clicks_run_compiled_once_warm(sam2_backend, project, shared_server):
    compiled = sam2_backend.services.models.compiled
    assert compiled.wait(900), "the decoder's warm-up did not end"
    health = sam2_backend.client.get("/health").json()["click_decoder"]
    assert health["path"] == "compiled" and health["reason"] is None, health
    assert health["compiles"] >= 2  # SAM 2.1's own decoder and the adapter's, per thread count
    # A click on a new image (features from the channels-last encoder), then one on an image the store gives
    # back: neither compiles again.
    url = shared_server.add(f"/{project}-sam2-compiled.png", encode(noise_image(90, 130)))
    for context in ({"result": [keypoint(30, 40, width=130, height=90)]},
                    {"result": [rectangle(10, 10, 50, 40, width=130, height=90)]}):
        body = predict_body(project, [brush_task(3, url)], context=context)
        response = sam2_backend.client.post("/predict", json=body)
        assert response.status_code == 200 and "error" not in response.json()["results"][0]
        sam2_backend.services.models.cache.clear()  # the next click reads the features from the disk store
    assert compiled.compiles == health["compiles"] and compiled.path == "compiled"
