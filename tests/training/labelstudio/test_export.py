"""Label Studio export -> dataset, against the fake Label Studio served on a local port."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle

from testkit.fake_label_studio import FakeLabelStudio, plain_file_server
from testkit.ls_annotations import (
    BRUSH_POLYGON_CONFIG,
    box_polygon,
    brush_region,
    iou,
    png_bytes,
    polygon_region,
    synthetic_scene,
)
from training.labelstudio.client import LabelStudioError, LabelStudioSource
from training.labelstudio.export import export_dataset


def source(ls: FakeLabelStudio, **kw) -> LabelStudioSource:
    return LabelStudioSource(ls.url, kw.pop("api_key", ls.legacy_token), retries=kw.pop("retries", 2),
                             backoff=kw.pop("backoff", 0.01), timeout=5)


@pytest.fixture
def ls():
    with FakeLabelStudio() as server:
        server.add_project(7, BRUSH_POLYGON_CONFIG)
        yield server


def add_scene_task(ls: FakeLabelStudio, seed: int, **annotation) -> tuple[int, np.ndarray, dict]:
    image, masks = synthetic_scene(seed)
    url = ls.add_image(7, f"scene{seed}.png", png_bytes(image))
    result = [brush_region(masks["disc"], "disc"), polygon_region(box_polygon(masks["box"]), image.shape[:2], "box")]
    task = ls.add_task(7, {"image": url}, [{"result": result, **annotation}])
    return task, image, masks


# ----- export against the fake server ---------------------------------------------------------------------


def test_export_builds_dataset_and_reports_bad_tasks(ls, tmp_path):
    good = [add_scene_task(ls, seed) for seed in range(3)]
    corrupt = brush_region(np.ones((96, 128), bool), "disc")
    corrupt["value"]["rle"] = corrupt["value"]["rle"][:4] + [255] * 3  # header says 96*128*4 values
    url = ls.add_image(7, "corrupt.png", png_bytes(synthetic_scene(9)[0]))
    corrupt_task = ls.add_task(7, {"image": url}, [{"result": [corrupt]}])
    missing_task = ls.add_task(7, {"image": "/data/upload/7/gone.png"}, [{"result": []}])
    ls.add_task(7, {"image": url}, [{"result": [], "was_cancelled": True}])
    ls.add_task(7, {"image": url})  # unlabeled: not exported

    result = export_dataset(source(ls), "7.1716912345", tmp_path)

    assert result.task_ids == [task for task, _, _ in good]
    assert result.dataset.class_names == ["disc", "box"]
    assert result.cancelled_only == 1
    for sample, (task, image, masks) in zip(result.dataset, good, strict=True):
        assert sample.name == f"task-{task}"
        assert np.array_equal(sample.image, image)
        assert np.array_equal(sample.masks[0], masks["disc"])
        assert iou(sample.masks[1], masks["box"]) > 0.97
    reasons = {entry["task"]: entry["reason"] for entry in result.skipped}
    assert set(reasons) == {corrupt_task, missing_task}
    assert "RLE" in reasons[corrupt_task]
    assert "gone.png" in reasons[missing_task] and "404" in reasons[missing_task]
    assert result.summary()["skipped"] == result.skipped


def test_images_are_cached_between_exports(ls, tmp_path):
    add_scene_task(ls, 1)
    export_dataset(source(ls), 7, tmp_path)
    before = len(ls.requests_to("/storage-data")) + len(ls.requests_to("/data/upload"))
    again = export_dataset(source(ls), 7, tmp_path)
    after = len(ls.requests_to("/storage-data")) + len(ls.requests_to("/data/upload"))
    assert len(again.dataset) == 1 and before == after == 1


def test_exif_rotated_image_lines_up_with_masks_drawn_on_the_display(ls, tmp_path):
    image, masks = synthetic_scene(4)
    # Stored sideways with "rotate 90 CW to display" (orientation 6): the browser shows `image`.
    url = ls.add_image(7, "exif.png", png_bytes(np.ascontiguousarray(np.rot90(image, k=1)), exif_orientation=6))
    ls.add_task(7, {"image": url}, [{"result": [brush_region(masks["disc"], "disc")]}])
    sample = export_dataset(source(ls), 7, tmp_path).dataset[0]
    assert np.array_equal(sample.image, image)
    assert np.array_equal(sample.masks[0], masks["disc"])


def test_brush_at_another_resolution_is_rescaled_and_wrong_shape_skipped(ls, tmp_path):
    image, masks = synthetic_scene(5)
    url = ls.add_image(7, "big.png", png_bytes(image))
    double = np.kron(masks["disc"], np.ones((2, 2), dtype=bool))
    ls.add_task(7, {"image": url}, [{"result": [brush_region(double, "disc")]}])
    square = np.zeros((50, 50), dtype=bool)
    bad = ls.add_task(7, {"image": url}, [{"result": [brush_region(square, "disc")]}])
    result = export_dataset(source(ls), 7, tmp_path)
    assert np.array_equal(result.dataset[0].masks[0], masks["disc"])
    assert result.skipped[0]["task"] == bad and "50x50" in result.skipped[0]["reason"]


def test_max_side_bounds_memory(ls, tmp_path):
    add_scene_task(ls, 6)
    sample = export_dataset(source(ls), 7, tmp_path, max_side=64).dataset[0]
    assert sample.image.shape == (48, 64, 3) and sample.masks.shape == (2, 48, 64)
    assert sample.masks[0].any()


def test_personal_access_token_is_exchanged_and_used_for_images(ls, tmp_path):
    add_scene_task(ls, 2)
    result = export_dataset(source(ls, api_key=ls.refresh_token), 7, tmp_path)
    assert len(result.dataset) == 1
    assert ls.requests_to("/api/token/refresh/")
    file_requests = ls.requests_to("/storage-data") + ls.requests_to("/data/upload")
    assert file_requests and all(r.headers["Authorization"].startswith("Bearer ") for r in file_requests)
    assert all(r.headers["Authorization"] != "Bearer " + ls.refresh_token for r in file_requests)


def test_token_is_never_sent_to_another_host(ls, tmp_path):
    image, masks = synthetic_scene(8)
    with plain_file_server({"/pics/a.png": png_bytes(image)}) as (other_url, other_log):
        ls.add_task(7, {"image": f"{other_url}/pics/a.png"}, [{"result": [brush_region(masks["disc"], "disc")]}])
        result = export_dataset(source(ls), 7, tmp_path)
    assert len(result.dataset) == 1
    assert other_log and all("Authorization" not in r.headers for r in other_log)


def test_transient_500_is_retried(ls, tmp_path):
    add_scene_task(ls, 1)
    ls.fail("/api/projects/7/export", 500, times=2)
    result = export_dataset(source(ls, retries=3), 7, tmp_path)
    assert len(result.dataset) == 1
    assert len(ls.requests_to("/api/projects/7/export")) == 3


@pytest.mark.parametrize("status", [401, 500])
def test_persistent_failure_raises_clear_error(ls, tmp_path, status):
    ls.fail("/api/projects/7/", status)
    with pytest.raises(LabelStudioError) as info:
        export_dataset(source(ls, retries=2), 7, tmp_path)
    message = str(info.value)
    assert f"HTTP {status}" in message and f"{ls.url}/api/projects/7/" in message and "3 attempts" in message
    assert info.value.status == status
    assert len(ls.requests_to("/api/projects/7/")) == 3


def test_wrong_token_fails_clearly(ls, tmp_path):
    with pytest.raises(LabelStudioError, match="HTTP 401.*LABEL_STUDIO_API_KEY"):
        export_dataset(source(ls, api_key="wrong", retries=0), 7, tmp_path)


def test_unreachable_label_studio(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    src = LabelStudioSource(f"http://127.0.0.1:{port}", "token", retries=1, backoff=0.01, timeout=2)
    with pytest.raises(LabelStudioError, match="no response"):
        export_dataset(src, 1, tmp_path)


def test_rle_helper_sanity():
    # The fake's brush builder must produce what the SDK decodes: guards the other tests.
    mask = np.zeros((3, 5), dtype=np.uint8)
    mask[1, 2] = 255
    assert len(mask2rle(mask)) > 4


# ----- the same contract against a real Label Studio 1.23.2 (slow: starts one) ---------------------------


@pytest.mark.e2e
def test_export_from_a_real_label_studio(tmp_path):
    from tests.e2e import ls_api
    from tests.e2e.label_studio import running_label_studio

    with running_label_studio(tmp_path / "ls") as server, server.client() as client:
        project = ls_api.create_project(client, BRUSH_POLYGON_CONFIG)["id"]
        scenes = [synthetic_scene(seed, size=(48, 64)) for seed in range(4)]
        ls_api.import_images(client, project, [(f"s{i}.png", png_bytes(image)) for i, (image, _) in enumerate(scenes)])
        tasks = ls_api.list_tasks(client, project)
        for task, (image, masks) in zip(tasks[:3], scenes[:3], strict=True):
            result = [brush_region(masks["disc"], "disc"),
                      polygon_region(box_polygon(masks["box"]), image.shape[:2], "box")]
            ls_api.create_annotation(client, task["id"], result)
        ls_api.create_annotation(client, tasks[3]["id"], [], was_cancelled=True)
        # A newer annotation of task 1 without the box replaces the first one.
        ls_api.create_annotation(client, tasks[0]["id"], [brush_region(scenes[0][1]["disc"], "disc")])

        for key in (server.legacy_token, server.personal_access_token()):
            result = export_dataset(LabelStudioSource(server.url, key, retries=1, backoff=0.1), project,
                                    tmp_path / key[:8])
            assert result.task_ids == [t["id"] for t in tasks[:3]]
            assert result.skipped == [] and result.cancelled_only == 1
            for index, sample in enumerate(result.dataset):
                image, masks = scenes[index]
                assert np.array_equal(sample.image, image)
                assert np.array_equal(sample.masks[0], masks["disc"])
                assert np.array_equal(sample.masks[1], masks["box"] if index else np.zeros_like(masks["box"]))
