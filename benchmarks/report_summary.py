"""The benchmark's summary for the README (``summary.md``): the target variant against the baseline."""

from __future__ import annotations

from typing import Any

from benchmarks.report_format import (
    TARGET_VARIANT,
    _both,
    _fmt,
    _lat,
    _niceness,
    _pair,
    _ratio,
    _x,
    backend_peak_mb,
    worker_peak_mb,
)


def summary_md(results: dict[str, Any]) -> str:
    """A compact table of the headline figures (for README.md's "Measured results")."""
    pairs = _pair(results)
    opt, base = pairs.get(TARGET_VARIANT, {}).get("optimized"), pairs.get(TARGET_VARIANT, {}).get("baseline")
    lines = [_summary_machine(results), "",
             "| vit_t, 1024 px | optimized | naive baseline | ratio |", "|---|---:|---:|---:|"]
    lines += _summary_latency_rows(opt, base)
    if opt:
        lines += _summary_batch_and_memory_rows(opt, base)
        lines += _summary_training_rows(opt, base)
    lines += _summary_other_models(pairs)
    return "\n".join(lines) + "\n"


def _summary_machine(results: dict[str, Any]) -> str:
    m = results["machine"]
    return (f"{m['cpu_model']}, {m['usable_cores']} cores (native bf16: {'yes' if m['native_bf16'] else 'no'}), "
            f"torch {m['torch_version']} ({m['torch_threads']} threads, {m['device']}), "
            f"load average {m['load_average_at_start'][0]} at the start and "
            f"{results.get('load_average_at_end', ['–'])[0]} at the end; random weights; "
            f"{results['plan']['image']} task images; mode {results['mode']}, {results.get('total_seconds')} s.")


def _summary_latency_rows(opt: dict | None, base: dict | None) -> list[str]:
    rows = [("warm click p50 / p95 ms", "later_click"), ("first click after opening a task, ms", "first_click"),
            ("first click on a task not opened, ms", "cold_first_click"),
            ("first click on a revisited task, ms", "revisit_first_click"),
            ("open a task: automatic /predict with 4 classes, ms", "open"),
            ("first click on a 12 MP photo, ms", "photo_first_click")]
    return [f"| {title} | {_both(opt, kind)} | {_both(base, kind)} | {_x(_ratio(_lat(base, kind), _lat(opt, kind)))} |"
            for title, kind in rows if _lat(opt, kind) is not None]


def _summary_batch_and_memory_rows(opt: dict, base: dict | None) -> list[str]:
    ob = opt["batch_summary"]
    bb = base["batch_summary"] if base else {}
    return [f"| batch of {ob['tasks']} tasks, images/s | {ob['images_per_second']:.2f} | "
            f"{_fmt(bb.get('images_per_second'), 2)} | "
            f"{_x(_ratio(ob['images_per_second'], bb.get('images_per_second')))} |",
            f"| backend peak resident memory, MB | {_fmt(backend_peak_mb(opt))} | "
            f"{_fmt(backend_peak_mb(base) if base else None)} | "
            f"{_x(_ratio(backend_peak_mb(base) if base else None, backend_peak_mb(opt)))} |"]


def _summary_training_rows(opt: dict, base: dict | None) -> list[str]:
    lines = []
    base_training = {t["labeled_images"]: t for t in (base or {}).get("training", [])}
    for t in opt.get("training", []):
        if t.get("clicks_meanwhile"):
            continue
        b = base_training.get(t["labeled_images"], {})
        lines.append(f"| training, webhook → active, {t['labeled_images']} labeled images, s "
                     f"(s/step) | {t['seconds_to_active']:.0f} ({_fmt(t['seconds_per_step'], 1)}) | "
                     f"{_fmt(b.get('seconds_to_active'))} ({_fmt(b.get('seconds_per_step'), 1)}) | |")
    for t in opt.get("training", []):
        during = t.get("clicks_meanwhile")
        if during and during["latency_ms"].get("n"):
            lat = during["latency_ms"]
            nice = _niceness(t, " (worker at nice {})")
            lines.append(f"| warm click p50 / p95 while training runs{nice}, ms | {lat['p50']:.0f} / "
                         f"{lat['p95']:.0f} | | |")
    lines.append(f"| training worker peak resident memory, MB | {_fmt(worker_peak_mb(opt))} | "
                 f"{_fmt(worker_peak_mb(base) if base else None)} | |")
    return lines


def _summary_other_models(pairs: dict[str, dict[str, dict]]) -> list[str]:
    others = [name for name in pairs if name != TARGET_VARIANT]
    if not others:
        return []
    lines = ["", "| other models (optimized / baseline) | warm click p50 ms | first click, not opened, ms | "
                 "open, 4 classes, ms | batch images/s | backend peak MB |", "|---|---:|---:|---:|---:|---:|"]
    for name in others:
        o, b = pairs[name].get("optimized"), pairs[name].get("baseline")

        def cell(fn: Any, digits: int = 0, o: dict | None = o, b: dict | None = b) -> str:
            return f"{_fmt(fn(o) if o else None, digits)} / {_fmt(fn(b) if b else None, digits)}"

        lines.append(f"| {name} | {cell(lambda r: _lat(r, 'later_click'))} | "
                     f"{cell(lambda r: _lat(r, 'cold_first_click'))} | {cell(lambda r: _lat(r, 'open'))} | "
                     f"{cell(lambda r: r['batch_summary']['images_per_second'], 2)} | {cell(backend_peak_mb)} |")
    return lines
