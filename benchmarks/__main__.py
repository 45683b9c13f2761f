"""``python -m benchmarks [--quick] [--out DIR] [--only vit_t-1024 ...]`` (``make bench``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from benchmarks import report
from benchmarks.runner import full_plan, quick_plan, run

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="samloop benchmarks (see benchmarks/)")
    parser.add_argument("--quick", action="store_true", help="smoke run: vit_t at 256 px, a few requests (< 1 min)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default benchmarks/results; with --quick benchmarks/results/quick)")
    parser.add_argument("--only", nargs="*", default=None, help="variants to run, e.g. vit_t-1024 vit_b-1024")
    parser.add_argument("--work", type=Path, default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--keep-work", action="store_true", help="keep the working directory (backend logs)")
    parser.add_argument("--no-micro", action="store_true", help="skip the hot-spot micro-benchmarks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    plan = quick_plan() if args.quick else full_plan()
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    results = run(plan, work_dir=args.work, keep_work=args.keep_work, only=args.only, micro=not args.no_micro)
    md_path, json_path = report.write(results, out)
    print(md_path.read_text())
    print(f"wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
