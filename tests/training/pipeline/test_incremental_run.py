"""Incremental runs end to end: the Label Studio stand-in over HTTP -> run_project -> a local registry.

Real model code (vit_t with random weights at 64 px, a few steps): these tests check what a run fetches,
trains on, holds out, reads back and publishes, not learning quality.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from testkit.fake_label_studio import FakeLabelStudio
from testkit.ls_annotations import BRUSH_POLYGON_CONFIG, brush_region, png_bytes, synthetic_scene
from training.jobs.training_job import _MODELS, train_project
from training.pipeline.settings import JobSettings
from training.registry import open_registry

PROJECT = "7"


def add_scene(ls: FakeLabelStudio, seed: int, project: int = 7) -> int:
    image, masks = synthetic_scene(seed, size=(48, 64))
    url = ls.add_image(project, f"scene{seed}.png", png_bytes(image))
    return ls.add_task(project, {"image": url}, [{"result": regions(masks)}])


def regions(masks: dict) -> list[dict]:
    return [brush_region(masks["disc"], "disc"), brush_region(masks["box"], "box")]


def annotate_again(ls: FakeLabelStudio, task_id: int, seed: int) -> None:
    ls.set_annotations(task_id, [{"result": regions(synthetic_scene(seed, size=(48, 64))[1])}])


@pytest.fixture
def make_ls():
    servers = []

    def make(tasks: int) -> FakeLabelStudio:
        server = FakeLabelStudio().__enter__()
        servers.append(server)
        server.add_project(7, BRUSH_POLYGON_CONFIG)
        for seed in range(tasks):
            add_scene(server, seed)
        return server

    yield make
    for server in servers:
        server.__exit__(None, None, None)


def settings_for(ls: FakeLabelStudio, root: Path, **overrides) -> JobSettings:
    values = dict(label_studio_url=ls.url, label_studio_api_key=ls.legacy_token, checkpoint="random", image_size=64,
                  data_dir=str(root / "data"), registry=str(root / "adapters"), steps_per_image=2, min_steps=2,
                  max_steps=40, incremental_steps=3, batch_size=2, train_max_seconds=60, ls_retries=0,
                  holdout_every=3, click_objects=2, click_max_clicks=5)
    return JobSettings(**(values | overrides))


def export_ids(ls: FakeLabelStudio, since: int) -> list[list[str]]:
    """The ``ids[]`` of every export request after the first ``since`` requests."""
    found = []
    for request in ls.requests_to("/api/projects/7/export")[since:]:
        found.append(parse_qs(urlparse(request.path).query).get("ids[]", []))
    return found


def test_one_new_annotation_costs_the_same_at_any_project_size(make_ls, tmp_path):
    seen = {}
    for size in (6, 18):
        ls = make_ls(size)
        settings = settings_for(ls, tmp_path / str(size))
        first = train_project(PROJECT, settings)
        assert first["status"] == "promoted" and first["plan"]["kind"] == "full"
        # The full run's budget grows with the project; it fetched every labeled task.
        assert first["plan"]["steps"] == min(40, 2 * (size - len(first_holdout(tmp_path / str(size)))))
        before = len(ls.requests_to("/api/projects/7/export"))
        annotate_again(ls, 4, seed=100)
        second = train_project(PROJECT, settings)
        assert second["status"] in ("promoted", "not_promoted") and second["plan"]["kind"] == "incremental"
        seen[size] = (second["plan"]["steps"], second["train"]["steps"], export_ids(ls, before),
                      second["export"]["fetched"], second["plan"]["new_tasks"])
    # Same budget, steps and Label Studio fetches after one new annotation, whether 6 or 18 tasks are labeled.
    assert seen[6] == seen[18] == (3, 3, [["4"]], 1, 1)


def first_holdout(root: Path) -> list[int]:
    versions = open_registry(str(root / "adapters")).versions(PROJECT)
    return versions[0].metadata["data"]["holdout_ids"]


def test_a_deleted_annotation_leaves_the_training_set(make_ls, tmp_path):
    ls = make_ls(6)
    settings = settings_for(ls, tmp_path)
    train_project(PROJECT, settings)
    registry = open_registry(str(tmp_path / "adapters"))
    assert "4" in registry.versions(PROJECT)[0].metadata["data"]["trained"]
    ls.set_annotations(4, [])  # the annotator deletes the task's only annotation
    annotate_again(ls, 3, seed=50)
    outcome = train_project(PROJECT, settings)
    meta = registry.load(PROJECT, outcome["version"])[0].metadata
    assert outcome["export"]["removed"] == 1 and 4 not in meta["data"]["task_ids"]
    assert "4" not in meta["data"]["trained"] and "3" in meta["data"]["trained"]
    ls.delete_task(6)  # a whole task deleted: gone from the next run's data too
    annotate_again(ls, 3, seed=51)
    meta = registry.load(PROJECT, train_project(PROJECT, settings)["version"])[0].metadata
    assert 6 not in meta["data"]["task_ids"] and "6" not in meta["data"]["trained"]


def test_a_held_out_task_stays_held_out_across_runs(make_ls, tmp_path):
    ls = make_ls(6)
    settings = settings_for(ls, tmp_path, holdout_cap=2)
    train_project(PROJECT, settings)
    registry = open_registry(str(tmp_path / "adapters"))
    held = registry.versions(PROJECT)[0].metadata["data"]["holdout_ids"]
    assert len(held) == 2 and set(held) < {1, 2, 5}  # tasks 1, 2 and 5 are candidates; the cap keeps two
    for seed in range(6, 14):  # more tasks, some of them candidates, and an edit of a held-out task
        add_scene(ls, seed)
    annotate_again(ls, held[0], seed=70)
    outcome = train_project(PROJECT, settings)
    meta = registry.load(PROJECT, outcome["version"])[0].metadata
    assert meta["data"]["holdout_ids"] == held  # the same tasks; the cap left no room for new ones
    assert not set(held) & {int(t) for t in meta["data"]["trained"]}
    # The edited task's active score no longer fits and is computed again; the other's is read back.
    assert meta["metrics"]["active_scored"] == {"read_back": 1, "computed": 1}


def test_nothing_new_is_up_to_date_and_a_full_retrain_trains_anyway(make_ls, tmp_path):
    ls = make_ls(6)
    settings = settings_for(ls, tmp_path)
    train_project(PROJECT, settings)
    before = len(ls.requests_to("/api/projects/7/export"))
    again = train_project(PROJECT, settings)
    assert again["status"] == "up_to_date" and again["active_version"] == 1
    assert export_ids(ls, before) == []  # nothing changed: no task fetched
    full = train_project(PROJECT, settings, full=True)
    assert full["status"] in ("promoted", "not_promoted") and full["plan"]["kind"] == "full"
    meta = open_registry(str(tmp_path / "adapters")).load(PROJECT, full["version"])[0].metadata
    assert meta["warm_start_from"] is None and "full retrain" in meta["start"]


def test_a_second_run_reuses_base_models_and_sams_click_traces(make_ls, tmp_path):
    ls = make_ls(6)
    settings = settings_for(ls, tmp_path, promote_tolerance=1.0)  # promoted, so its clicks are checked
    train_project(PROJECT, settings)
    built = _MODELS.built
    annotate_again(ls, 3, seed=60)
    outcome = train_project(PROJECT, settings)
    assert _MODELS.built == built  # the base model stayed in memory between runs
    clicks = outcome["metrics"]["clicks"]
    assert clicks["base"]["objects"] == 2 and clicks["computed_base"] == 0  # SAM's traces carried over


def test_a_candidate_that_is_not_promoted_is_not_clicked_and_sams_traces_carry_on(make_ls, tmp_path):
    ls = make_ls(6)
    train_project(PROJECT, settings_for(ls, tmp_path))
    registry = open_registry(str(tmp_path / "adapters"))
    first = registry.load(PROJECT, 1)[0].metadata
    assert first["metrics"]["clicks"]["base"]["objects"] == 2  # the first version was promoted and clicked
    annotate_again(ls, 3, seed=61)
    # A negative tolerance demands a held-out gain of 1.0 IoU: impossible, so the candidate stays inactive.
    outcome = train_project(PROJECT, settings_for(ls, tmp_path, promote_tolerance=-1.0))
    assert outcome["status"] == "not_promoted"
    clicks = outcome["metrics"]["clicks"]
    assert clicks["decoder"] == "base" and clicks["candidate"] is None and "not checked" in clicks["reason"]
    meta = registry.load(PROJECT, outcome["version"])[0].metadata
    assert meta["clicks_base_traces"] == first["clicks_base_traces"]


def test_a_task_whose_image_is_gone_is_skipped_and_the_run_goes_on(make_ls, tmp_path):
    ls = make_ls(6)
    settings = settings_for(ls, tmp_path)
    train_project(PROJECT, settings)
    _, task = ls._find(4)
    task["data"] = {"image": "/data/upload/7/gone.png"}  # the task now points at an image that does not exist
    annotate_again(ls, 4, seed=80)
    outcome = train_project(PROJECT, settings)
    assert outcome["status"] in ("promoted", "not_promoted")
    skipped = outcome["export"]["skipped"]
    assert [s["task"] for s in skipped] == [4] and "cannot be fetched" in skipped[0]["reason"]
    meta = open_registry(str(tmp_path / "adapters")).load(PROJECT, outcome["version"])[0].metadata
    assert 4 not in meta["data"]["task_ids"]  # its old masks do not stand in for the new annotation
