"""Learning-curve plots (matplotlib PNG): mIoU and NoC@90 against labeled images, spread over repeats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)

from benchmarks.quality.report import methods_in_order  # noqa: E402

COLOURS = {"decoder": "tab:blue", "encoder": "tab:orange", "full": "tab:green", "promptless": "tab:purple",
           "sam": "tab:grey"}


def _curve(summary: dict[str, Any], method: str, value: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """(labeled counts, means, minima, maxima) of ``value`` for ``method``, in labeled order."""
    points = sorted((int(n), s[value]) for n, s in summary.get(method, {}).items() if value in s)
    return ([n for n, _ in points], [s["mean"] for _, s in points], [s["min"] for _, s in points],
            [s["max"] for _, s in points])


def _plot(results: dict[str, Any], value: str, ylabel: str, path: Path, reference: str | None = None,
          ylim: tuple[float, float] | None = None) -> Path:
    summary = results["summary"]
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for method in methods_in_order(results):
        if method == "sam":
            continue
        xs, means, lows, highs = _curve(summary, method, value)
        if not xs:
            continue
        colour = COLOURS.get(method)
        axes.plot(xs, means, marker="o", color=colour, label=method)
        # The band is the range over repeats (min to max): with 2-3 repeats an sd says little.
        axes.fill_between(xs, lows, highs, color=colour, alpha=0.18, linewidth=0)
    if reference and reference in summary.get("sam", {}).get("0", {}):
        axes.axhline(summary["sam"]["0"][reference]["mean"], color=COLOURS["sam"], linestyle="--",
                     label="SAM's decoder (no training)")
    labeled = sorted({int(n) for by_n in summary.values() for n in by_n if int(n) > 0})
    axes.set_xscale("log", base=2)
    axes.set_xticks(labeled or [1], [str(n) for n in labeled or [1]])
    axes.set_xlabel("labeled images")
    axes.set_ylabel(ylabel)
    if ylim is not None:
        axes.set_ylim(*ylim)
    plan = results["plan"]
    axes.set_title(f"{plan['model']} {plan['image_size']} px, base: {results['base']['kind']}, data: "
                   f"{results['data']['source']}; band: range over {plan['repeats']} repeat(s)", fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """``miou.png`` (held-out mIoU, higher is better) and ``noc90.png`` (clicks to 90 % IoU, lower is better)."""
    out.mkdir(parents=True, exist_ok=True)
    most = results["plan"]["max_clicks"]
    # The whole click range: a curve at the ceiling must read as "never reached 90 %", not as a flat line.
    return [_plot(results, "miou", "held-out mIoU (promptless)", out / "miou.png"),
            _plot(results, "noc90", f"NoC@90 (max {most}; lower is better)", out / "noc90.png", "noc90",
                  ylim=(0, most + 1))]
