"""The quality benchmark (``python -m benchmarks quality``): data sources, draws, cells, outputs.

The smoke run is a smaller variant of ``--quick`` in this process: a stand-in built in seconds (64 px,
a few steps), all four methods at 1 and 2 labeled images, a few steps each. It checks that every
number lands in its range and in the right place, that the plots are real PNGs, and that a rerun
reuses every finished cell. What the curves look like is the committed full run's business.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from benchmarks.__main__ import main as benchmarks_main
from benchmarks.quality.baseline import score_label_maps
from benchmarks.quality.cli import build_parser, plan_from_args
from benchmarks.quality.data import draw_order, load_data, split_user_data
from benchmarks.quality.plan import QualityPlan, quick_plan
from benchmarks.quality.plots import write_plots
from benchmarks.quality.report import write
from benchmarks.quality.runner import benchmark_data, run_plan
from testkit.ls_annotations import brush_region, polygon_region
from testkit.standin import target_dataset
from testkit.standin_clicks import CLICK_STEPS
from training.data.dataset import DatasetError
from training.drawing import DEFAULT_OPACITY, PALETTE, PANEL_GAP, POSITIVE_CLICK, label_height, tint
from training.inference.predictor import Predictor
from training.learn.clicks import first_click
from training.learn.evaluation import evaluate
from training.model.loading import new_adapter_model
from training.model.weights import resolve_checkpoint

METHODS = ["decoder", "encoder", "full", "promptless"]
TINY_STANDIN = {"image_size": 64, "encoder_steps": 3, "decoder_steps": 3, "images": 2, "batch_size": 2}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_plan(cache: Path) -> QualityPlan:
    return quick_plan(labeled=[1, 2], steps=3, budget_seconds=30.0, image_size=64, pool_images=3, held_out=3,
                      max_clicks=20, cache=cache, standin=TINY_STANDIN)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    work = tmp_path_factory.mktemp("quality")
    plan = _tiny_plan(work / "cache")
    results = run_plan(plan, work / "out" / "cells", progress=False, comparisons=work / "out" / "comparisons")
    md_path, json_path = write(results, work / "out")
    plots = write_plots(results, work / "out")
    return work, plan, results, md_path.read_text(), json.loads(json_path.read_text()), plots


def test_every_cell_is_measured_with_numbers_in_range(smoke):
    _, _, results, _, saved, _ = smoke
    cells = {(c["method"], c["labeled"], c["repeat"]): c for c in saved["cells"]}
    assert set(cells) == {("sam", 0, 0)} | {(m, n, 0) for m in METHODS for n in (1, 2)}
    assert saved["computed_cells"] == 9 and saved["reused_cells"] == 0
    for (method, labeled, _), cell in cells.items():
        if method != "sam":
            assert len(cell["images"]) == labeled and cell["train"]["steps"] == 3
            assert cell["train_seconds"] > 0 and cell["memory"]["peak_rss_mb"] > 0
            assert 0.0 <= cell["masks"]["mean_iou"] <= 1.0
            assert all(0.0 <= v["iou"] <= 1.0 for v in cell["masks"]["per_class"].values())
        if method == "promptless":
            assert cell["clicks"] is None
            continue
        clicks = cell["clicks"]
        assert clicks["objects"] == cells[("sam", 0, 0)]["clicks"]["objects"] >= 3
        assert all(0.0 <= clicks["iou_at"][k] <= 1.0 for k in ("1", "3", "5"))
        assert 1 <= clicks["noc85"] <= clicks["noc90"] <= 20
    # Nested draws: the 2 labeled images of a repeat include its 1.
    assert cells[("decoder", 1, 0)]["images"][0] == cells[("decoder", 2, 0)]["images"][0]
    assert saved["machine"]["torch_threads"] == 1 and saved["base"]["kind"] == "standin"


def test_the_largest_count_draws_click_pictures_of_a_few_held_out_tasks(smoke):
    work, plan, results, *_ = smoke
    folder = work / "out" / "comparisons"
    assert sorted(p.name for p in folder.iterdir()) == ["decoder-n002-r0", "encoder-n002-r0", "full-n002-r0"]
    held_out = benchmark_data(plan).held_out
    cells = {(c["method"], c["labeled"]): c for c in results["cells"]}
    assert "pictures" not in cells[("decoder", 1)] and "pictures" not in cells[("promptless", 2)]
    for method in ("decoder", "encoder", "full"):
        names = cells[(method, 2)]["pictures"]
        assert len(names) == 2 and sorted(names) == sorted(p.name for p in (folder / f"{method}-n002-r0").iterdir())
        for name in names:
            picture = cv2.cvtColor(cv2.imread(str(folder / f"{method}-n002-r0" / name)), cv2.COLOR_BGR2RGB)
            assert picture.shape == (label_height(64) + 64, 4 * 64 + 3 * PANEL_GAP, 3)
            task, class_name, clicks = name.removesuffix(".png").rsplit("-", 2)
            assert clicks == "3clicks"
            sample = next(s for s in held_out.samples if s.name == task)
            index = held_out.class_names.index(class_name)
            panels = [picture[label_height(64):, k * (64 + PANEL_GAP) :][:, :64] for k in range(4)]
            truth = sample.masks[index]
            assert np.array_equal(panels[1], tint(sample.image, truth, PALETTE[index], DEFAULT_OPACITY))
            start = first_click(truth)  # both decoders get the same first click
            assert all(tuple(p[start.y, start.x]) == POSITIVE_CLICK for p in panels[2:])


def test_the_summary_averages_the_cells(smoke):
    _, _, _, _, saved, _ = smoke
    for cell in saved["cells"]:
        stats = saved["summary"][cell["method"]][str(cell["labeled"])]
        if cell["masks"] is not None:
            assert stats["miou"]["mean"] == pytest.approx(cell["masks"]["mean_iou"]) and stats["miou"]["n"] == 1
        if cell["clicks"] is not None:
            assert stats["noc90"]["mean"] == pytest.approx(cell["clicks"]["noc90"])


def test_the_table_has_a_row_per_method_and_count(smoke):
    _, _, results, md, _, _ = smoke
    methods = ("| sam |", "| decoder |", "| encoder |", "| full |", "| promptless |")
    rows = [line for line in md.splitlines() if line.startswith(methods)]
    assert len(rows) == 1 + 4 * 2
    # The clicks-saved table: one row per labeled count of the decoder kind.
    saved = [line for line in md.splitlines() if re.match(r"\| \d+ \| -?\d+\.\d\d", line)]
    assert [line.split(" | ")[0] for line in saved] == [f"| {n}" for n in sorted(results["clicks_saved"], key=int)]
    assert len(saved) == len(results["summary"]["decoder"])
    decoder_one = next(r for r in rows if r.startswith("| decoder | 1 |"))
    miou = results["summary"]["decoder"]["1"]["miou"]["mean"]
    assert f"{miou:.3f}" in decoder_one
    assert "ring" in md and "NoC@90" in md and "usable cores" in md


def test_the_plots_are_pngs(smoke):
    *_, plots = smoke
    assert [p.name for p in plots] == ["miou.png", "noc90.png"]
    for path in plots:
        image = cv2.imread(str(path))
        assert image is not None and image.shape[0] > 200 and image.shape[1] > 300
        assert image.std() > 5  # not a blank canvas


def test_a_rerun_reuses_every_finished_cell(smoke):
    work, plan, results, *_ = smoke
    again = run_plan(plan, work / "out" / "cells", progress=False)
    assert again["reused_cells"] == 9 and again["computed_cells"] == 0
    assert again["cells"] == results["cells"]


def test_the_report_can_be_rewritten_from_the_json_alone(smoke, capsys):
    work, _, _, md, saved, _ = smoke
    (work / "out" / "quality.md").write_text("stale")
    assert benchmarks_main(["quality", "--report-only", "--out", str(work / "out")]) == 0
    assert (work / "out" / "quality.md").read_text() == md
    assert json.loads((work / "out" / "quality.json").read_text())["cells"] == saved["cells"]
    assert benchmarks_main(["quality", "--report-only", "--out", str(work / "nothing")]) == 2
    assert "quality.json" in capsys.readouterr().err


def test_cells_say_where_they_were_computed(smoke):
    _, _, results, *_ = smoke
    for cell in results["cells"]:
        assert cell["computed_on"]["device"] == "cpu" and cell["computed_on"]["torch_threads"] == 1


def test_changed_settings_do_not_reuse_cells():
    plan = quick_plan()
    assert plan.fingerprint("data", "base") == quick_plan(repeats=5, labeled=[1, 2, 4]).fingerprint("data", "base")
    assert plan.fingerprint("data", "base") != quick_plan(steps=41).fingerprint("data", "base")
    assert plan.fingerprint("data", "base") != plan.fingerprint("other data", "base")
    assert plan.fingerprint("data", "base") != quick_plan(device="cuda").fingerprint("data", "base")
    with pytest.raises(ValueError, match="gpu"):
        quick_plan(device="gpu").check()


def test_the_promptless_scorer_agrees_with_evaluate():
    dataset = target_dataset(3, 64, seed=7)
    model = new_adapter_model(resolve_checkpoint("vit_t", "random"), 64, dataset.class_names)
    predictor = Predictor(model, precision="fp32")
    maps = [predictor.predict_classes(e).label_map for e in predictor.embed([s.image for s in dataset.samples])]
    expected = evaluate(model, dataset, precision="fp32")
    got = score_label_maps(maps, dataset)
    assert got["mean_iou"] == pytest.approx(expected["mean_iou"])
    assert got["per_class"].keys() == expected["per_class"].keys()
    perfect = [np.argmax(np.concatenate([np.zeros((1, *s.masks.shape[1:])), s.masks]), axis=0) for s in dataset]
    assert score_label_maps(perfect, dataset)["mean_iou"] == 1.0


def test_draws_are_nested_reproducible_and_differ_per_repeat():
    assert draw_order(10, 0) == draw_order(10, 0)
    assert sorted(draw_order(10, 1)) == list(range(10))
    assert draw_order(10, 0) != draw_order(10, 1)


def _scenes(count: int = 4) -> list[tuple[str, np.ndarray, np.ndarray]]:
    dataset = target_dataset(count, 48, seed=3)
    return [(f"scene{k}", s.image, s.masks) for k, s in enumerate(dataset.samples)]


def test_a_mask_folder_loads(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for name, image, masks in _scenes():
        cv2.imwrite(str(tmp_path / "images" / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        ids = np.zeros(image.shape[:2], np.uint8)
        for k, plane in enumerate(masks):
            ids[plane] = k + 1
        cv2.imwrite(str(tmp_path / "masks" / f"{name}.png"), ids)
    (tmp_path / "labels.txt").write_text("1 ring\n2 bar\n3 cross\n")
    dataset = load_data(tmp_path)
    assert dataset.class_names == ["ring", "bar", "cross"] and len(dataset) == 4
    assert np.array_equal(dataset[0].masks, _scenes()[0][2])
    split = split_user_data(dataset, 16, "folder")
    pool, held_out = split.pool, split.held_out
    assert len(held_out) == 2 and len(pool) == 2  # at most half is held out
    assert not {s.name for s in pool} & {s.name for s in held_out}


def test_a_coco_file_loads(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((40, 50, 3), np.uint8))
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 50}],
            "categories": [{"id": 3, "name": "bar"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    dataset = load_data(tmp_path / "coco.json")
    assert dataset.class_names == ["bar"] and int(dataset[0].masks.sum()) == 100


def test_a_label_studio_export_loads_with_and_without_its_config(tmp_path):
    tasks = []
    for k, (name, image, masks) in enumerate(_scenes()):
        cv2.imwrite(str(tmp_path / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        regions = [brush_region(plane, label) for label, plane in zip(["ring", "bar"], masks[:2], strict=True)
                   if plane.any()]
        regions.append(polygon_region([(1, 1), (9, 1), (9, 9), (1, 9)], image.shape[:2], "cross"))
        # Label Studio prefixes uploads with 8 hex digits: the folder holds the original name.
        tasks.append({"id": k + 1, "data": {"img": f"/data/upload/1/0123abcd-{name}.png"},
                      "annotations": [{"id": k, "result": regions}]})
    tasks.append({"id": 99, "data": {"img": "/data/upload/1/missing.png"}, "annotations": [{"id": 9, "result": []}]})
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    dataset = load_data(tmp_path / "export.json")
    assert set(dataset.class_names) == {"ring", "bar", "cross"} and len(dataset) == 4
    ring = dataset.class_names.index("ring")
    assert np.array_equal(dataset[0].masks[ring], _scenes()[0][2][0])
    assert int(dataset[0].masks[dataset.class_names.index("cross")].sum()) == 64
    config = ('<View><Image name="image" value="$img"/><BrushLabels name="tag" toName="image">'
              '<Label value="bar"/><Label value="ring"/></BrushLabels></View>')
    (tmp_path / "config.xml").write_text(config)
    configured = load_data(tmp_path / "export.json", label_config=tmp_path / "config.xml")
    assert configured.class_names == ["bar", "ring"]
    with pytest.raises(DatasetError):
        load_data(tmp_path / "export.json", images=tmp_path / "nowhere")


def test_the_command_line(tmp_path, capsys):
    args = build_parser().parse_args(["--quick", "--labeled", "1,2", "--budget-seconds", "5", "--methods", "decoder"])
    plan = plan_from_args(args)
    assert plan.mode == "quick" and plan.labeled == [1, 2] and plan.budget_seconds == 5 and plan.repeats == 1
    assert benchmarks_main(["quality", "--methods", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        benchmarks_main(["quality", "--help"])
    assert "--budget-seconds" in capsys.readouterr().out


def test_the_stand_in_clicks_by_default_and_its_build_options_are_checked(capsys):
    default = plan_from_args(build_parser().parse_args([]))
    assert default.standin == {"click_steps": CLICK_STEPS}
    plain = plan_from_args(build_parser().parse_args(["--standin", "click_steps=0", "--standin", "encoder_steps=120"]))
    assert plain.standin == {"click_steps": 0, "encoder_steps": 120}
    assert plain.fingerprint("data", "base") != default.fingerprint("data", "base")
    for bad, says in ((["--standin", "clicks=3"], "stand-in options ['clicks'] are not among"),
                      (["--standin", "image_size=0"], "image_size must be an integer >= 1, got 0"),
                      (["--standin", "seed"], "--standin wants NAME=VALUE"),
                      (["--standin", "seed=1", "--checkpoint", "random"], "no effect with --checkpoint")):
        assert benchmarks_main(["quality", *bad]) == 2, bad
        assert says in capsys.readouterr().err, bad


def test_a_synthetic_family_is_named_as_data_and_stays_a_synthetic_run():
    args = build_parser().parse_args(["--data", "synthetic:second", "--held-out", "2", "--image-size", "64"])
    plan = plan_from_args(args)
    assert plan.mode == "full"  # not "own data": the stand-in's scenes, only another family of them
    data = benchmark_data(plan)
    assert data.source == "synthetic:second" and data.pool.class_names == ["triangle", "star", "crescent"]
    assert len(data.pool) == plan.pool_images and len(data.held_out) == 2
    plan.data = Path("synthetic:target")
    assert benchmark_data(plan).pool.class_names == ["ring", "bar", "cross"]
