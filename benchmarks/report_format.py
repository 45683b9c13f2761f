"""Formatting shared by the benchmark's tables (``report``) and its README summary (``report_summary``)."""

from __future__ import annotations

from typing import Any

# The variant the speed targets and the summary are about.
TARGET_VARIANT = "vit_t-1024"
# The same with the pretrained stand-in's compact masks (``plans.trained_masks_variant``).
STANDIN_VARIANT = "vit_t-1024-standin"


def _pair(results: dict[str, Any]) -> dict[str, dict[str, dict]]:
    pairs: dict[str, dict[str, dict]] = {}
    for run in results["runs"]:
        pairs.setdefault(run["variant"], {})[run["kind"]] = run
    return pairs


def _ratio(baseline: float | None, optimized: float | None) -> float | None:
    if not baseline or not optimized:
        return None
    return round(baseline / optimized, 2)


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def backend_peak_mb(run: dict) -> float | None:
    return run.get("memory", {}).get("roles", {}).get("backend", {}).get("peak_rss_mb")


def worker_peak_mb(run: dict) -> float | None:
    roles = run.get("memory", {}).get("roles", {})
    peaks = [roles[r]["peak_rss_mb"] for r in ("worker", "worker_job") if r in roles]
    return max(peaks) if peaks else None


def _lat(run: dict | None, kind: str, stat: str = "p50") -> float | None:
    if not run:
        return None
    return run["interactive"]["latency_ms"].get(kind, {}).get(stat)


def _both(run: dict | None, kind: str) -> str:
    p50, p95 = _lat(run, kind), _lat(run, kind, "p95")
    return "–" if p50 is None else f"{p50:.0f} / {p95:.0f}"


def _niceness(training: dict[str, Any], template: str) -> str:
    niceness = training.get("worker_niceness")
    return "" if niceness is None else template.format(niceness)
