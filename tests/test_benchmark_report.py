"""Parts of the benchmark that run in milliseconds: the brush RLE micro-benchmark and the targets table.

No wall-clock assertions: only the shape of what ``make bench`` reports.
"""

from __future__ import annotations

from benchmarks import hotspots, report


def test_rle_micro_benchmark_measures_speckled_compact_and_empty_masks():
    rle = hotspots.rle_encoders(24, 32, repeats=1)
    assert rle["image"] == "32x24"
    for name in ("speckled", "compact", "empty"):
        assert rle[name]["identical"], name
        assert rle[name]["encode_brush_ms"] >= 0 and rle[name]["answer_json_ms"] >= 0
    assert rle["speckled"]["runs"] > rle["compact"]["runs"] > rle["empty"]["runs"] == 1


def _run(latency_ms: dict[str, dict]) -> dict:
    return {"variant": report.TARGET_VARIANT, "kind": "optimized", "interactive": {"latency_ms": latency_ms}}


def test_the_drafted_regions_target_is_the_p50_ratio_to_the_same_clicks_without_them():
    latency = {"plain_context_click": {"p50": 80.0}, "drafted_context_click": {"p50": 84.0}}
    (drafted,) = [t for t in report.targets({"runs": [_run(latency)]}) if "drafted" in t["target"]]
    assert drafted["measured"] == 1.05 and drafted["limit"] == 1.1 and drafted["met"] is True
    latency["drafted_context_click"]["p50"] = 96.0
    (drafted,) = [t for t in report.targets({"runs": [_run(latency)]}) if "drafted" in t["target"]]
    assert drafted["met"] is False


def test_the_drafted_regions_target_is_open_without_those_clicks():
    (drafted,) = [t for t in report.targets({"runs": [_run({})]}) if "drafted" in t["target"]]
    assert drafted["measured"] is None and drafted["met"] is None


def test_warm_click_targets_read_each_variant_and_the_clicks_while_training():
    random = _run({"later_click": {"p50": 45.0, "p95": 58.0}})
    random["training"] = [
        {"clicks_meanwhile": {"latency_ms": {"n": 30, "p50": 50.0, "p95": 75.0}}, "worker_niceness": 10},
        {"clicks_meanwhile": {"latency_ms": {"n": 30, "p50": 70.0, "p95": 95.0}}, "worker_niceness": 0},
    ]
    trained = {**_run({"later_click": {"p50": 36.0, "p95": 61.0}}), "variant": report.STANDIN_VARIANT,
               "training": [{"clicks_meanwhile": {"latency_ms": {"n": 40, "p50": 52.0, "p95": 83.0}},
                             "worker_niceness": 10}]}
    got = {t["target"]: t for t in report.targets({"runs": [random, trained]})}
    assert got["warm click p50, random weights (speckled masks, ~0.6 MB answers)"]["met"] is False  # 45 > 40
    assert got["warm click p95, random weights"]["met"] is True
    assert got["warm click p50, trained weights (compact masks)"]["measured"] == 36.0
    assert got["warm click p95, trained weights"]["met"] is False  # 61 > 60
    # The worker at its own (lower) priority, as a default install runs it; not the reniced comparison.
    assert got["warm click p95 while a training job runs, random weights"]["measured"] == 75.0
    assert got["warm click p95 while a training job runs, trained weights"]["measured"] == 83.0
    assert got["warm click p95 while a training job runs, trained weights"]["met"] is False
    without = {t["target"]: t for t in report.targets({"runs": [random]})}
    assert without["warm click p50, trained weights (compact masks)"]["met"] is None
    assert without["warm click p95 while a training job runs, trained weights"]["measured"] is None
