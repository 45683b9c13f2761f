"""``python -m benchmarks [--quick] [--out DIR] [--only vit_t-1024 ...]`` (``make bench``).

``python -m benchmarks quality ...`` is the quality benchmark (``benchmarks.quality.cli``);
``python -m benchmarks clickpath`` times a warm click's stages in-process (``benchmarks.click_path``);
``python -m benchmarks decoder`` the mask decoder alone, eager vs compiled (``benchmarks.decoder_alone``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from benchmarks import report
from benchmarks.model_plans import models_plan
from benchmarks.plans import clicks_plan, compare_plan, full_plan, quick_plan
from benchmarks.runner import run

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["quality"]:
        from benchmarks.quality.cli import main as quality_main

        return quality_main(argv[1:])
    if argv[:1] == ["clickpath"]:
        from benchmarks.click_path import main as click_path_main

        return click_path_main(argv[1:])
    if argv[:1] == ["decoder"]:
        from benchmarks.decoder_alone import main as decoder_main

        return decoder_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="samloop benchmarks (see benchmarks/)")
    parser.add_argument("--quick", action="store_true", help="smoke run: vit_t at 128 px, a few requests")
    parser.add_argument("--compare", action="store_true",
                        help="a shorter vit_t-1024 trace and one batch of 8, for before/after runs of a change")
    parser.add_argument("--clicks", action="store_true",
                        help="the click parts of the full run (vit_t-1024 trace, drafted regions, training)")
    parser.add_argument("--models", action="store_true",
                        help="vit_t, sam2.1_hiera_t and sam2.1_hiera_s at 1024 px (docs/which-base-model.md)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default benchmarks/results; with --quick benchmarks/results/quick)")
    parser.add_argument("--only", nargs="*", default=None, help="variants to run, e.g. vit_t-1024 vit_b-1024")
    parser.add_argument("--work", type=Path, default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--keep-work", action="store_true", help="keep the working directory (backend logs)")
    parser.add_argument("--no-micro", action="store_true", help="skip the hot-spot micro-benchmarks")
    parser.add_argument("--no-training", action="store_true", help="skip the training runs")
    parser.add_argument("--no-baseline", action="store_true", help="skip the naive baseline runs")
    parser.add_argument("--note", default="", help="a sentence about this run, shown in the results")
    parser.add_argument("--backend-env", nargs="*", default=[], metavar="NAME=VALUE",
                        help="extra environment for the backends (an experiment; recorded in the results)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    plan = (quick_plan() if args.quick else compare_plan() if args.compare else clicks_plan() if args.clicks
            else models_plan() if args.models else full_plan())
    for item in args.backend_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--backend-env wants NAME=VALUE, got {item!r}")
        plan.extra_env[name] = value
    out = args.out or (RESULTS / plan.mode if plan.mode != "full" else RESULTS)
    kinds = ("optimized",) if args.no_baseline else ("optimized", "baseline")
    results = run(plan, work_dir=args.work, keep_work=args.keep_work, only=args.only, micro=not args.no_micro,
                  kinds=kinds, training=not args.no_training)
    results["note"] = args.note
    md_path, json_path = report.write(results, out)
    print(md_path.read_text())
    print(f"wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
