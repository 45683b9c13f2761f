"""`python -m benchmarks --quick` runs end to end and writes the result files in the documented shape.

No wall-clock assertions: the machine may be busy. The quick mode uses vit_t at 128 px with random
weights, a handful of requests and a one-second training budget.

The backends run with ``--backend-env COMPILE_DECODER=false``: compiling the click decoder took 132 s of the
run's 168 s (both backends; 2-core EPYC with native bf16, 2026-12-07) and no assert here needs it. The
compiled click path has tests of its own (``tests/training/inference/test_compiled_decoder*.py``,
``tests/backend/test_sam2_backend.py``); this run checks that ``--backend-env`` reaches the backends.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NO_COMPILE = "COMPILE_DECODER=false"


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench")
    command = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--backend-env", NO_COMPILE]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "latest.json").read_text()), (out / "latest.md").read_text()


def test_machine_is_described(quick_results):
    machine = quick_results[0]["machine"]
    for key in ("cpu_model", "usable_cores", "torch_version", "torch_threads", "device", "load_average_at_start"):
        assert key in machine, key
    if machine["device"] == "cpu":
        assert machine["auto_precision"] == ("bf16" if machine["native_bf16"] else "fp32")
    assert quick_results[0]["random_weights"] is True


def test_every_run_has_trace_batch_and_memory(quick_results):
    results = quick_results[0]
    assert results["failures"] == []
    kinds = {(run["variant"], run["kind"]) for run in results["runs"]}
    assert kinds == {("vit_t-128", "optimized"), ("vit_t-128", "baseline")}
    for run in results["runs"]:
        latency = run["interactive"]["latency_ms"]
        for kind in ("open", "first_click", "cold_first_click", "revisit_first_click", "later_click"):
            assert latency[kind]["n"] > 0 and latency[kind]["p50"] > 0, (run["kind"], kind)
            assert latency[kind]["p95"] >= latency[kind]["p50"]
        assert run["batch"] and run["batch"][0]["images_per_second"] > 0
        backend = run["memory"]["roles"]["backend"]
        assert 0 < backend["file_backed_at_sampled_peak_mb"] < backend["peak_rss_mb"]
        # --backend-env reached the backend: /health says why clicks are eager.
        assert run["backend"]["click_decoder"]["reason"] == NO_COMPILE, run["backend"]["click_decoder"]
    assert results["plan"]["extra_env"] == {"COMPILE_DECODER": "false"}


def test_training_reaches_a_new_active_version_that_the_backend_serves(quick_results):
    (optimized,) = [run for run in quick_results[0]["runs"] if run["kind"] == "optimized"]
    plain, clicking = optimized["training"]
    for outcome in (plain, clicking):
        assert outcome["seconds_to_active"] > 0 and outcome["served_by_backend"] is True
        assert outcome["train"]["steps"] >= 1 and outcome["seconds_per_step"] > 0
        assert {"export", "train", "evaluate"} <= set(outcome["stages"])
        assert outcome["worker_peak_rss_mb"] > 0
    assert clicking["clicks_meanwhile"]["latency_ms"]["n"] > 0


def test_comparisons_targets_and_hotspots(quick_results):
    results, markdown = quick_results
    assert any(c["metric"] == "later_click p50 ms" and c["ratio"] for c in results["comparisons"])
    first = results["targets"][0]
    assert first["target"].startswith("warm click p50") and first["limit"] == 40.0  # issue 25's target
    assert {t["variant"] for t in results["targets"]} == {"vit_t-1024", "vit_t-1024-standin"}
    rle = results["hotspots"]["rle"]
    assert rle["speckled"]["identical"] and rle["compact"]["identical"] and rle["empty"]["identical"]
    assert {"fp32", "bf16"} <= set(results["hotspots"]["precision"])
    for heading in ("## Targets", "## Interactive", "## Automatic pre-annotation", "## Training", "## Memory",
                    "## Hot spots"):
        assert heading in markdown
