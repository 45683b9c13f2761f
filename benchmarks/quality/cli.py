"""``python -m benchmarks quality [--quick] [--data PATH --checkpoint FILE] ...`` (``make bench-quality``).

Without ``--data`` and ``--checkpoint`` it runs on synthetic scenes with the pretrained stand-in (built
once with its clicks stage, ~5 min on 2 cores, into ``--cache``); with them, on your images and your SAM checkpoint.
``--incremental`` compares incremental training runs with one full run (``benchmarks.quality.incremental``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.quality.data import SYNTHETIC_FAMILIES
from benchmarks.quality.incremental import incremental_plan, run_incremental
from benchmarks.quality.incremental_report import write as write_incremental
from benchmarks.quality.plan import DEFAULT_CACHE, METHOD_NAMES, QualityPlan, quick_plan
from benchmarks.quality.plots import write_plots
from benchmarks.quality.report import write
from benchmarks.quality.runner import run_plan
from training.model.base_models import BASE_MODELS
from training.model.weights import CheckpointError

RESULTS = Path(__file__).resolve().parent.parent / "results" / "quality"


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks quality", description=__doc__.splitlines()[0])
    data = parser.add_argument_group("data and base model (default: synthetic scenes and the pretrained stand-in)")
    data.add_argument("--data", type=Path, help="a mask folder (images/, masks/, labels.txt), a COCO JSON, "
                                                "a Label Studio JSON export, or a synthetic family: "
                                                f"{' or '.join(SYNTHETIC_FAMILIES)} (the default)")
    data.add_argument("--images", type=Path, help="image folder for a COCO file or a Label Studio export "
                                                  "(default: the file's folder)")
    data.add_argument("--label-config", type=Path, help="the project's label config XML, for a Label Studio export")
    data.add_argument("--checkpoint", help="SAM checkpoint file, or 'random' (default: the pretrained stand-in)")
    data.add_argument("--model", default="vit_t", choices=sorted(BASE_MODELS), help="SAM variant (default vit_t)")
    data.add_argument("--image-size", type=int, help="model input size in px (default 256)")
    data.add_argument("--device", help="cpu (default), cuda, cuda:N or auto")
    data.add_argument("--standin", action="append", default=[], metavar="NAME=VALUE",
                      help="a build option of the pretrained stand-in (testkit.standin.build_standin), e.g. "
                           "click_steps=0 for the one without its clicks stage (repeatable)")
    data.add_argument("--held-out", type=int, help="held-out images (default 12; at most half of --data)")
    run = parser.add_argument_group("what to measure")
    run.add_argument("--labeled", type=_int_list, help="labeled image counts (default 1,2,4,8,16)")
    run.add_argument("--repeats", type=int, help="draws of the labeled images per count (default 3)")
    run.add_argument("--methods", type=_name_list, help=f"subset of {','.join(METHOD_NAMES)} (default all)")
    run.add_argument("--steps", type=int, help="training steps per run (default 200)")
    run.add_argument("--budget-seconds", type=float, help="wall-clock cap per training run in seconds (default 40)")
    run.add_argument("--quick", action="store_true", help="smoke run: 1 and 4 labeled images, 1 repeat, 40 steps")
    run.add_argument("--incremental", action="store_true",
                     help="incremental runs (labels arriving one at a time) against one full run, through the "
                          "training pipeline, at 4, 8 and 16 labeled images (with --quick: 2 and 4, 1 repeat)")
    run.add_argument("--job", action="append", default=[], metavar="NAME=VALUE",
                     help="a JobSettings override for --incremental's runs, e.g. incremental_steps=48 (repeatable)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, help="results folder (default benchmarks/results/quality[/quick], or "
                                              "./quality-results with --data)")
    out.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"stand-in cache (default {DEFAULT_CACHE})")
    out.add_argument("--note", default="", help="a sentence about this run, shown in the results")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    out.add_argument("--report-only", action="store_true",
                     help="rewrite the table and plots from the results folder's quality.json; train nothing")
    return parser


def job_overrides(items: list[str], option: str = "--job") -> dict[str, Any]:
    """``NAME=VALUE`` pairs as a dict; a VALUE that parses as JSON is taken as such (numbers, objects)."""
    overrides: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"{option} wants NAME=VALUE, got {item!r}")
        try:
            overrides[name] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name] = value
    return overrides


def _base_plan(args: argparse.Namespace) -> QualityPlan:
    if args.incremental:
        quick = {"mode": "incremental quick", "labeled": [2, 4], "repeats": 1, "pool_images": 8, "held_out": 6}
        return incremental_plan(**(quick if args.quick else {}))
    return quick_plan() if args.quick else QualityPlan()


def plan_from_args(args: argparse.Namespace) -> QualityPlan:
    plan = _base_plan(args)
    overrides = {"data": args.data, "images": args.images, "label_config": args.label_config,
                 "checkpoint": args.checkpoint, "model": args.model, "image_size": args.image_size,
                 "held_out": args.held_out, "labeled": args.labeled, "repeats": args.repeats,
                 "methods": args.methods, "steps": args.steps, "budget_seconds": args.budget_seconds,
                 "device": args.device}
    for name, value in overrides.items():
        if value is not None:
            setattr(plan, name, value)
    plan.cache, plan.note = args.cache, args.note
    if args.standin:
        if plan.checkpoint is not None:
            raise ValueError("--standin sets how the stand-in is built; it has no effect with --checkpoint")
        plan.standin = {**plan.standin, **job_overrides(args.standin, "--standin")}
    if plan.data is not None and str(plan.data) not in SYNTHETIC_FAMILIES and plan.mode == "full":
        plan.mode = "own data"
    return plan.check()


def _out_dir(args: argparse.Namespace, plan: QualityPlan) -> Path:
    if args.out is not None:
        return args.out
    if plan.data is not None or plan.checkpoint is not None:
        return Path("quality-results")  # never over the committed synthetic results
    results = RESULTS / "incremental" if args.incremental else RESULTS
    return results / "quick" if args.quick else results


def _incremental(args: argparse.Namespace, plan: QualityPlan, out: Path) -> Path:
    """Run (or with --report-only rewrite) the incremental comparison; the Markdown file's path."""
    if args.report_only:
        results = json.loads((out / "incremental.json").read_text())
    else:
        results = run_incremental(plan, job_overrides(args.job), out / "cells", progress=not args.no_progress)
    md_path, json_path = write_incremental(results, out)
    print(md_path.read_text())
    print(f"wrote {md_path}, {json_path}")
    return md_path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # One intra-op thread unless OMP_NUM_THREADS says otherwise: numbers then depend less on other work
    # on the cores, and one thread is what the committed run used.
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS") or 1)))
    try:
        plan = plan_from_args(args)
        out = _out_dir(args, plan)
        if args.incremental:
            _incremental(args, plan, out)
            return 0
        if args.report_only:
            results = json.loads((out / "quality.json").read_text())
        else:
            results = run_plan(plan, out / "cells", progress=not args.no_progress, comparisons=out / "comparisons")
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, CheckpointError) as exc:  # DatasetError and LabelConfigError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    md_path, json_path = write(results, out)
    plots = write_plots(results, out)
    print(md_path.read_text())
    print(f"wrote {md_path}, {json_path}, {', '.join(str(p) for p in plots)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
