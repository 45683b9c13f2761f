"""The incremental mode's summary, verdict, Markdown table and JSON file (``incremental.md``/``.json``).

The verdict per labeled count compares the arms' mean held-out mIoU over the repeats: "equal within the
spread" when the difference of the means is no larger than the larger of the two arms' standard
deviations over the repeats (the draw-to-draw spread each arm shows on its own). The paired difference
(same draw, incremental minus full) is reported beside it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.quality.incremental import ARMS
from benchmarks.quality.report import _fmt, _machine_line, write_report
from benchmarks.quality.report import _stats as stats

CLICK_VALUES = (("iou1", "1"), ("iou3", "3"), ("iou5", "5"))


def point_values(point: dict[str, Any]) -> dict[str, float]:
    """The numbers of one arm at one count in one repeat that are averaged over repeats."""
    values = {"miou": point["masks"]["mean_iou"]}
    values.update({f"iou:{name}": v["iou"] for name, v in point["masks"]["per_class"].items()})
    clicks = point.get("clicks") or {}
    if clicks.get("objects"):
        values.update({name: clicks["iou_at"][k] for name, k in CLICK_VALUES if k in clicks["iou_at"]})
        values.update(noc85=clicks["noc85"], noc90=clicks["noc90"])
    return values


def _cost_values(cell: dict[str, Any], arm: str, labeled: int) -> dict[str, float]:
    """What the arm's runs cost: seconds and steps of the run that made the scored version, and for the
    incremental arm how many of its runs up to ``labeled`` were planned incremental."""
    if arm == "full":
        run = cell["points"]["full"][str(labeled)]["runs"][0]
        return {"run_seconds": run["seconds"], "steps": run["steps"]}
    runs = cell["incremental_runs"][:labeled]
    later = [r for r in runs if r["plan"]["kind"] == "incremental"]
    return {"run_seconds": sum(r["seconds"] for r in later) / max(1, len(later)),
            "steps": later[-1]["steps"] if later else runs[-1]["steps"],
            "total_steps": sum(r["steps"] for r in runs), "incremental_runs": len(later)}


def summarize(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """{"arms": {arm: {n: {value: stats}}}, "difference": {n: stats of the paired mIoU difference},
    "verdict": {n: {...}}} over the repeats."""
    grouped: dict[str, dict[str, dict[str, list[float]]]] = {arm: {} for arm in ARMS}
    differences: dict[str, list[float]] = {}
    for cell in cells:
        for arm in ARMS:
            for n, point in cell["points"][arm].items():
                slot = grouped[arm].setdefault(n, {})
                for name, value in {**point_values(point), **_cost_values(cell, arm, int(n))}.items():
                    slot.setdefault(name, []).append(value)
        for n, point in cell["points"]["incremental"].items():
            full = cell["points"]["full"][n]
            differences.setdefault(n, []).append(point["masks"]["mean_iou"] - full["masks"]["mean_iou"])
    arms = {arm: {n: {name: stats(v) for name, v in values.items()} for n, values in by_n.items()}
            for arm, by_n in grouped.items()}
    difference = {n: stats(values) for n, values in differences.items()}
    return {"arms": arms, "difference": difference,
            "verdict": {n: verdict(arms["incremental"][n]["miou"], arms["full"][n]["miou"]) for n in difference}}


def verdict(incremental: dict[str, float], full: dict[str, float]) -> dict[str, Any]:
    """Whether the arms' mean mIoU differ by more than the larger spread (see the module)."""
    gap = incremental["mean"] - full["mean"]
    spread = max(incremental["std"], full["std"])
    if incremental["n"] < 2 or full["n"] < 2:
        return {"gap": gap, "spread": None, "equal": None, "words": "one repeat: no spread to judge by"}
    equal = abs(gap) <= spread
    words = ("equal within the spread" if equal else
             f"incremental {'lower' if gap < 0 else 'higher'} by {abs(gap):.3f}, beyond the spread")
    return {"gap": gap, "spread": spread, "equal": equal, "words": words}


def _settings_lines(results: dict[str, Any]) -> list[str]:
    plan, base, data, job = results["plan"], results["base"], results["data"], results["settings"]
    base_text = (f"the pretrained stand-in `{base['checkpoint']}`" if base["kind"] == "standin"
                 else f"checkpoint `{base['checkpoint']}`")
    overrides = ", ".join(f"{k}={v}" for k, v in sorted(results["job"].items())) or "none"
    return [
        f"- Base: {plan['model']} at {plan['image_size']} px, {base_text}; adapter kind `{job['adapter_kind']}`.",
        f"- Data: {data['source']}; classes {', '.join(data['classes'])}; each repeat draws its labeled images "
        f"from a pool of {data['pool_images']} (seed = repeat); every arm, count and repeat is scored on the "
        f"same {data['held_out_images']} held-out images.",
        f"- Runs: `training.pipeline.run.run_project` against the Label Studio stand-in, a local registry; "
        f"incremental runs {job['incremental_steps']} steps (new tasks {job['new_share']:.0%} of each batch of "
        f"{job['batch_size']}); a full run max({job['min_steps']}, min({job['max_steps']}, "
        f"{job['steps_per_image']} x images)) steps; the runs hold nothing out (the benchmark's set judges). "
        f"JobSettings overrides: {overrides}. Precision {plan['precision']}.",
        f"- Clicks: simulated clicker, at most {plan['max_clicks']} clicks per object, the adapter's decoder "
        "asked with the object's class.",
        f"- Machine: {_machine_line(results)}.",
        f"- Repeats: {plan['repeats']} ({results['computed_cells']} computed, {results['reused_cells']} reused), "
        f"{results['seconds']:.0f} s in all.",
    ]


def _rows(summary: dict[str, Any]) -> list[str]:
    header = ["labeled", "arm", "mIoU", "IoU@1", "IoU@3", "NoC@90", "steps of the last run", "run s",
              "paired Δ mIoU (inc − full)", "verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n in sorted(summary["difference"], key=int):
        for arm in ARMS:
            s = summary["arms"][arm][n]
            last = arm == ARMS[-1]
            row = [n, arm, _fmt(s["miou"]), _fmt(s.get("iou1")), _fmt(s.get("iou3")), _fmt(s.get("noc90"), 2),
                   _fmt(s["steps"], 0), _fmt(s["run_seconds"], 1),
                   _fmt(summary["difference"][n]) if last else "", summary["verdict"][n]["words"] if last else ""]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def summary_md(results: dict[str, Any]) -> str:
    summary = results["summary"]
    lines = ["# Quality: incremental runs against one full run", ""]
    if results["plan"].get("note"):
        lines += [results["plan"]["note"], ""]
    lines += _settings_lines(results) + [""]
    lines += ["Held-out mIoU of each arm's active adapter (promptless masks, mean ± sd over repeats), clicks "
              "(IoU after 1 and 3 clicks, NoC@90), the steps of the run that made the scored version and its "
              "seconds (incremental: the mean incremental run up to that count; full: the one full run). "
              "Verdict: equal within the spread when |mean difference| ≤ the larger of the two arms' sd.", ""]
    lines += _rows(summary) + [""]
    for n in sorted(summary["difference"], key=int):
        inc = summary["arms"]["incremental"][n]
        lines.append(f"- {n} labeled: the incremental arm ran {inc['incremental_runs']['mean']:.0f} incremental "
                     f"runs after its first (full) one, {inc['total_steps']['mean']:.0f} steps in all; "
                     f"gap {summary['verdict'][n]['gap']:+.3f}, spread {_spread(summary['verdict'][n])}.")
    return "\n".join(lines) + "\n"


def _spread(verdict_: dict[str, Any]) -> str:
    spread = verdict_["spread"]
    return "–" if spread is None or not math.isfinite(spread) else f"{spread:.3f}"


def write(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Add the summary to ``results`` and write ``incremental.md`` and ``incremental.json`` under ``out``."""
    return write_report(results, out, "incremental", summarize, summary_md)
