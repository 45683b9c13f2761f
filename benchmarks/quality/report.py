"""The quality benchmark's summary (means and spread over repeats), Markdown table and JSON file."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from training.learn.clicks import compare

CLICK_KEYS = ("iou1", "iou3", "iou5", "noc85", "noc90")
METHOD_ORDER = ("sam", "decoder", "encoder", "full", "promptless")


def methods_in_order(results: dict[str, Any]) -> list[str]:
    """The run's methods, SAM's reference first (the JSON file keeps its keys sorted by name)."""
    return sorted(results["methods"], key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER))


def _cell_values(cell: dict[str, Any]) -> dict[str, float]:
    """The numbers of one cell that are averaged over repeats."""
    values: dict[str, float] = {}
    if cell.get("masks"):
        values["miou"] = cell["masks"]["mean_iou"]
        values.update({f"iou:{name}": v["iou"] for name, v in cell["masks"]["per_class"].items()})
    clicks = cell.get("clicks")
    if clicks and clicks["objects"]:
        values.update({f"iou{k}": clicks["iou_at"][k] for k in ("1", "3", "5") if k in clicks["iou_at"]})
        values.update(noc85=clicks["noc85"], noc90=clicks["noc90"])
    if cell.get("train"):
        values.update(train_seconds=cell["train_seconds"], steps=cell["train"]["steps"])
    memory = cell.get("memory") or {}
    for name in ("peak_rss_mb", "growth_mb", "cuda_peak_mb"):
        if memory.get(name) is not None:
            values[name] = memory[name]
    return values


def _stats(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "min": float(array.min()), "max": float(array.max()), "n": len(array)}


def summarize(cells: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """{method: {labeled (str): {value name: {mean, std, min, max, n}}}} over the repeats of each."""
    grouped: dict[str, dict[str, dict[str, list[float]]]] = {}
    for cell in cells:
        slot = grouped.setdefault(cell["method"], {}).setdefault(str(cell["labeled"]), {})
        for name, value in _cell_values(cell).items():
            slot.setdefault(name, []).append(value)
    return {method: {n: {name: _stats(v) for name, v in values.items()} for n, values in by_n.items()}
            for method, by_n in grouped.items()}


def clicks_saved(cells: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Clicks saved per object by the decoder kind, by labeled count: NoC@90 of SAM's decoder minus NoC@90 of
    the decoder the click gate (``clicks.compare``) chooses between the two, per repeat.

    The gate here decides on the benchmark's own held-out objects, so this is what the gate can save at best;
    a run decides on its own held-out tasks. 0 when SAM's decoder keeps the clicks.
    """
    sam = next((c["clicks"] for c in cells if c["method"] == "sam" and c.get("clicks")), None)
    saved: dict[str, list[float]] = {}
    chose: dict[str, int] = {}
    for cell in cells:
        clicks = cell.get("clicks")
        if sam is None or cell["method"] != "decoder" or not clicks or not clicks["objects"]:
            continue
        adapter_wins = compare(clicks, sam)
        n = str(cell["labeled"])
        saved.setdefault(n, []).append(sam["noc90"] - (clicks if adapter_wins else sam)["noc90"])
        chose[n] = chose.get(n, 0) + int(adapter_wins)
    return {n: {**_stats(values), "adapter_chosen": chose[n]} for n, values in saved.items()}


def _saved_lines(results: dict[str, Any]) -> list[str]:
    saved = results.get("clicks_saved") or {}
    if not saved:
        return []
    lines = ["Clicks saved per object by the decoder kind: SAM's NoC@90 minus that of the decoder the click gate "
             "chooses (mean ± sd over repeats; 0 where SAM's decoder keeps the clicks). The gate decides here on "
             "the held-out objects it is scored on, so this is the most it can save.", "",
             "| labeled | clicks saved per object | repeats where the gate chose the adapter |", "|---|---|---|"]
    for n, stat in sorted(saved.items(), key=lambda item: int(item[0])):
        lines.append(f"| {n} | {_fmt(stat, 2)} | {stat['adapter_chosen']} of {stat['n']} |")
    return lines + [""]


def _fmt(stat: dict[str, float] | None, digits: int = 3) -> str:
    if stat is None or not math.isfinite(stat["mean"]):
        return "–"
    if stat["n"] > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


def _machine_line(results: dict[str, Any]) -> str:
    m = results["machine"]
    return (f"{m['cpu_model']}, {m['usable_cores']} usable cores, torch {m['torch_version']} with "
            f"{m['torch_threads']} thread(s), {m['device']}, {m['auto_precision']} (load at start "
            f"{m['load_average_at_start']}), commit {m['git_commit']}{' (dirty)' if m['git_dirty'] else ''}, "
            f"{m['started_at']}")


def _settings_lines(results: dict[str, Any]) -> list[str]:
    plan, base, data = results["plan"], results["base"], results["data"]
    clicks = base.get("own_clicks")
    clicking = (f"; SAM's decoder there: IoU@1 {clicks['iou_at']['1']:.2f}, NoC@90 {clicks['noc90']:.1f}, after its "
                f"{base['recipe']['clicks']['steps']} steps of simulated click sessions" if clicks else "")
    base_text = {"standin": f"the pretrained stand-in `{base['checkpoint']}` (synthetic pretraining, held-out "
                            f"mIoU {base.get('pretrain_held_out_mean_iou', float('nan')):.2f} on its own scenes"
                            f"{clicking})",
                 "random": "RANDOM weights (numbers mean nothing about real images)"}.get(
        base["kind"], f"checkpoint `{base['checkpoint']}`")
    budget = f", at most {plan['budget_seconds']:.0f} s" if plan["budget_seconds"] else ""
    return [
        f"- Base: {plan['model']} at {plan['image_size']} px, {base_text}.",
        f"- Data: {data['source']}; classes {', '.join(data['classes'])}; labeled images drawn from a pool of "
        f"{data['pool_images']}, scored on the same {data['held_out_images']} held-out images.",
        f"- Training: {plan['steps']} steps of batch {plan['batch_size']}{budget} per run; {plan['repeats']} "
        f"repeat(s) (different draws of the labeled images, seed = repeat); precision {plan['precision']}.",
        f"- Clicks: simulated clicker, at most {plan['max_clicks']} clicks per object; NoC of an object that "
        "never reaches the IoU counts as the maximum.",
        f"- Machine: {_machine_line(results)}.",
        f"- Cells: {results['computed_cells']} computed, {results['reused_cells']} reused, "
        f"{results['seconds']:.0f} s in all.",
    ]


def _rows(results: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    classes = results["data"]["classes"]
    header = ["method", "labeled", "mIoU", *[f"IoU {c}" for c in classes], "IoU@1", "IoU@3", "IoU@5",
              "NoC@85", "NoC@90", "train s", "peak MB (+growth)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods_in_order(results):
        for n, s in sorted(summary.get(method, {}).items(), key=lambda item: int(item[0])):
            memory = "–" if "peak_rss_mb" not in s else \
                f"{s['peak_rss_mb']['mean']:.0f} (+{s.get('growth_mb', {'mean': 0})['mean']:.0f})"
            row = [method, n if method != "sam" else "–", _fmt(s.get("miou")),
                   *[_fmt(s.get(f"iou:{c}")) for c in classes],
                   *[_fmt(s.get(k), 3 if k.startswith("iou") else 2) for k in CLICK_KEYS],
                   _fmt(s.get("train_seconds"), 1), memory]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def summary_md(results: dict[str, Any]) -> str:
    summary = results["summary"]
    lines = [f"# Quality benchmark ({results['plan']['mode']})", ""]
    if results["plan"].get("note"):
        lines += [results["plan"]["note"], ""]
    lines += _settings_lines(results) + [""]
    lines += ["Promptless masks: mIoU and per-class IoU on the held-out set (mean ± sd over repeats). Clicks: "
              "IoU after 1/3/5 clicks, NoC@85/90 (each adapter's own decoder, asked with the object's class; "
              "`sam` is SAM's decoder with clicks alone). Train s: the training loop plus, for frozen-encoder "
              "methods, encoding each labeled image and its mirror once. Peak MB: resident memory of the "
              "process while training (sampled), growth over its start in brackets.", ""]
    lines += _rows(results, summary) + [""]
    lines += _saved_lines(results)
    lines += [f"- `{m}`: {results['methods'][m]}" for m in methods_in_order(results)]
    if results["left_out_labeled"]:
        lines.append(f"- Left out: labeled counts {results['left_out_labeled']} exceed the pool.")
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Add the summary to ``results`` and write ``quality.md`` and ``quality.json`` under ``out``."""
    results["clicks_saved"] = clicks_saved(results["cells"])
    return write_report(results, out, "quality", summarize, summary_md)


def write_report(results: dict[str, Any], out: Path, stem: str, summarize_cells: Callable[[Any], dict[str, Any]],
                 markdown: Callable[[dict[str, Any]], str]) -> tuple[Path, Path]:
    """Add ``summarize_cells(results["cells"])`` as the summary; write ``<stem>.md`` and ``<stem>.json``."""
    results["summary"] = summarize_cells(results["cells"])
    out.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out / f"{stem}.md", out / f"{stem}.json"
    json_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    md_path.write_text(markdown(results))
    return md_path, json_path
