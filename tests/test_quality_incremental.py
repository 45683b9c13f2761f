"""The quality benchmark's incremental mode (``python -m benchmarks quality --incremental``).

A tiny run in this process: a stand-in built in seconds (64 px), two labels arriving one at a time, a few
steps per run, one repeat. It checks that the incremental arm really went through the pipeline's
incremental plan (as its published version recorded it), that the full arm ran one full run over the same
tasks, that every number lands in its range, and the verdict rule. The committed run judges the quality.
"""

from __future__ import annotations

import json

import pytest

from benchmarks.__main__ import main as benchmarks_main
from benchmarks.quality.cli import build_parser, job_overrides, plan_from_args
from benchmarks.quality.incremental import incremental_plan, run_incremental
from benchmarks.quality.incremental_report import verdict, write
from tests.test_quality_benchmark import TINY_STANDIN, _one_thread  # noqa: F401 - the fixture applies here too

TINY_JOB = {"incremental_steps": 2, "min_steps": 3, "max_steps": 4, "steps_per_image": 1, "batch_size": 2}




@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    work = tmp_path_factory.mktemp("incremental")
    plan = incremental_plan(labeled=[2], repeats=1, image_size=64, pool_images=2, held_out=2, max_clicks=3,
                            cache=work / "cache", standin=TINY_STANDIN)
    results = run_incremental(plan, TINY_JOB, work / "out" / "cells", progress=False)
    md_path, json_path = write(results, work / "out")
    return work, plan, results, md_path.read_text(), json.loads(json_path.read_text())


def test_the_incremental_arm_runs_incremental_plans_and_the_full_arm_one_full_run(tiny):
    _, _, results, _, _ = tiny
    [cell] = results["cells"]
    runs = cell["incremental_runs"]
    # One run per arriving label: the first has nothing to warm-start from, the second is incremental.
    assert [r["plan"]["kind"] for r in runs] == ["full", "incremental"]
    assert [r["steps"] for r in runs] == [3, 2] and runs[1]["plan"]["new_tasks"] == 1
    incremental, full = cell["points"]["incremental"]["2"], cell["points"]["full"]["2"]
    # What the scored (active) versions recorded in the registry's metadata.
    assert incremental["version"] == 2 and incremental["plan"]["kind"] == "incremental"
    assert full["version"] == 1 and full["plan"]["kind"] == "full" and full["plan"]["steps"] == 3
    assert [r["plan"]["kind"] for r in full["runs"]] == ["full"]
    assert len(cell["images"]) == 2


def test_both_arms_are_scored_with_numbers_in_range(tiny):
    _, _, results, _, saved = tiny
    for arm in ("incremental", "full"):
        point = results["cells"][0]["points"][arm]["2"]
        assert 0.0 <= point["masks"]["mean_iou"] <= 1.0 and point["masks"]["images"] == 2
        clicks = point["clicks"]
        assert clicks["objects"] >= 1 and all(0.0 <= clicks["iou_at"][k] <= 1.0 for k in ("1", "3"))
        assert 1 <= clicks["noc85"] <= clicks["noc90"] <= 3
        stats = saved["summary"]["arms"][arm]["2"]
        assert stats["miou"]["mean"] == pytest.approx(point["masks"]["mean_iou"]) and stats["miou"]["n"] == 1
        assert stats["run_seconds"]["mean"] > 0
    difference = saved["summary"]["difference"]["2"]["mean"]
    cell = results["cells"][0]["points"]
    assert difference == pytest.approx(cell["incremental"]["2"]["masks"]["mean_iou"]
                                       - cell["full"]["2"]["masks"]["mean_iou"])
    assert saved["summary"]["verdict"]["2"]["equal"] is None  # one repeat: no spread to judge by


def test_the_table_has_both_arms_and_a_rerun_reuses_the_repeat(tiny, capsys):
    work, plan, results, md, _ = tiny
    rows = [line for line in md.splitlines() if line.startswith("| 2 |")]
    assert [r.split(" | ")[1] for r in rows] == ["incremental", "full"]
    assert "no spread to judge by" in rows[1] and "usable cores" in md
    again = run_incremental(plan, TINY_JOB, work / "out" / "cells", progress=False)
    assert again["reused_cells"] == 1 and again["cells"] == results["cells"]
    (work / "out" / "incremental.md").write_text("stale")
    assert benchmarks_main(["quality", "--incremental", "--report-only", "--out", str(work / "out")]) == 0
    assert (work / "out" / "incremental.md").read_text() == md


def test_the_verdict_compares_the_gap_with_the_larger_spread():
    def arm(mean: float, std: float) -> dict:
        return {"mean": mean, "std": std, "n": 3}

    assert verdict(arm(0.50, 0.03), arm(0.52, 0.01))["equal"] is True
    beyond = verdict(arm(0.40, 0.02), arm(0.50, 0.03))
    assert beyond["equal"] is False and "lower by 0.100" in beyond["words"]
    assert verdict(arm(0.6, 0.0), arm(0.5, 0.0))["words"].startswith("incremental higher")


def test_the_command_line_of_the_mode():
    args = build_parser().parse_args(["--incremental", "--job", "incremental_steps=48",
                                      "--job", "adapter_kind=decoder"])
    plan = plan_from_args(args)
    assert plan.mode == "incremental" and plan.labeled == [4, 8, 16] and plan.repeats == 3
    assert job_overrides(args.job) == {"incremental_steps": 48, "adapter_kind": "decoder"}
    quick = plan_from_args(build_parser().parse_args(["--incremental", "--quick"]))
    assert quick.labeled == [2, 4] and quick.repeats == 1
    with pytest.raises(ValueError, match="NAME=VALUE"):
        job_overrides(["incremental_steps"])
    assert benchmarks_main(["quality", "--incremental", "--job", "nope=1", "--out", "/nonexistent"]) == 2
