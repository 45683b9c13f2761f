"""What holds the decoder kind near 0.5 held-out mIoU on the stand-in (issue 23, item 6): prompt and loss.

``python -m benchmarks.quality.ceiling --out benchmarks/results/experiments/ceiling-DATE``

Each run trains the decoder kind (``BenchmarkContext``'s data, draws and training settings, but a fixed step
budget and no wall-clock cap, so that a busy machine changes seconds, not results) on ``n`` labeled images of a
synthetic family, once per variant, the variants of one (family, n, repeat) back to back so that they meet the
same load. It scores promptless masks on the held-out set (``evaluate``), and on the labeled images themselves:
a model that fits its training images but not the held-out ones is held by what generalises (features), not
by its loss or its step budget.

Variants (``VARIANTS``): the current defaults; 8 prompt tokens per class instead of 2 (prompt design); the
focal term dropped from the mask loss, leaving dice and the IoU head (loss). The prompt oracle
(``oracle_miou``) bounds what any better class prompt could give: starting from the default adapter's
prompts, it tunes the prompts on each held-out image's own ground truth (decoder frozen) and scores the
result. If even that stays near 0.5, no prompt design will lift it.

Results: ``<out>.json`` (settings, machine, every run) and ``<out>.md`` (tables, mean ± sd over repeats).
Takes the stand-in from ``--cache`` (built if missing). Run it with one torch thread, as the benchmark does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.machine import describe
from benchmarks.quality.baseline import score_label_maps
from benchmarks.quality.data import SYNTHETIC_FAMILIES
from benchmarks.quality.methods import BenchmarkContext
from benchmarks.quality.plan import DEFAULT_CACHE, QualityPlan
from benchmarks.quality.report import _fmt, _stats
from benchmarks.quality.runner import base_weights, benchmark_data
from training.inference.predictor import ImageEmbedding, Predictor
from training.learn.config import TrainConfig
from training.learn.evaluation import evaluate
from training.learn.losses import mask_loss
from training.learn.trainer import prepare_targets, train_adapter
from training.model.adapter import SamAdapter
from training.model.config import AdapterConfig
from training.model.loading import new_adapter_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """A change to the decoder kind's defaults: adapter options and training options on top of them."""

    label: str
    adapter: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


VARIANTS = {
    "default": Variant("current defaults (2 prompt tokens per class; focal 2 + dice 1 + IoU head 1)"),
    "tokens8": Variant("8 prompt tokens per class", adapter={"prompt_tokens": 8}),
    "dice": Variant("no focal term: dice 1 + IoU head 1", train={"focal_weight": 0.0}),
}
ORACLE_STEPS = 60
ORACLE_LR = 1e-2


def oracle_miou(model: SamAdapter, ctx: BenchmarkContext, steps: int = ORACLE_STEPS) -> dict[str, Any]:
    """Held-out masks after tuning the class prompts on each held-out image's own ground truth.

    The decoder (and its LoRA) stays as trained; only the C x T prompt tokens move, from the trained ones,
    ``steps`` Adam steps on the training loss for that image alone. An upper bound on what a better class
    prompt could give this decoder on these features. Leaves ``model``'s prompts as they were.
    """
    trained = model.class_prompts.detach().clone()
    maps = []
    for sample, embedding in zip(ctx.data.held_out.samples, ctx.held_out_embeddings, strict=True):
        model.class_prompts = nn.Parameter(trained.clone())
        targets, valid = prepare_targets(model, sample.masks)
        features = embedding.features.to(model.device)
        optimizer = torch.optim.Adam([model.class_prompts], lr=ORACLE_LR)
        for _ in range(steps):
            logits, iou = model.class_logits(features)
            loss = mask_loss(logits[:, 0], iou[:, 0], targets.to(model.device), valid.to(model.device),
                             2.0, 1.0, 0.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        maps.append(Predictor(model, precision=ctx.plan.precision).predict_classes(embedding).label_map)
    model.class_prompts = nn.Parameter(trained)
    return score_label_maps(maps, ctx.data.held_out)


def _train_embeddings(ctx: BenchmarkContext, labeled: int, repeat: int) -> list[ImageEmbedding]:
    return [ctx.train_embeddings.get(s.image) for s in ctx.train_set(labeled, repeat).samples]


def run_variant(ctx: BenchmarkContext, name: str, labeled: int, repeat: int, oracle: bool) -> dict[str, Any]:
    """Train variant ``name`` on draw ``repeat``'s first ``labeled`` images; its scores and timings."""
    variant, plan = VARIANTS[name], ctx.plan
    train_set = ctx.train_set(labeled, repeat)
    config = TrainConfig.from_dict({**ctx.train_config(repeat).to_dict(), **variant.train})
    model = new_adapter_model(ctx.weights, plan.image_size, list(train_set.class_names),
                              AdapterConfig.for_kind("decoder", **variant.adapter))
    model.to(ctx.base.device)
    result = train_adapter(model, train_set, config, embeddings=ctx.train_embeddings)
    held_out = evaluate(model, ctx.data.held_out, plan.precision, embeddings=ctx.held_out_embeddings)
    fitted = evaluate(model, train_set, plan.precision, embeddings=_train_embeddings(ctx, labeled, repeat))
    run = {"family": ctx.data.source, "variant": name, "labeled": labeled, "repeat": repeat,
           "steps": result.steps, "train_seconds": round(result.seconds, 2),
           "seconds_per_step": round(result.seconds / max(1, result.steps), 4), "final_loss": result.final_loss,
           "held_out_miou": round(held_out["mean_iou"], 4), "train_miou": round(fitted["mean_iou"], 4),
           "held_out_per_class": {k: round(v["iou"], 4) for k, v in held_out["per_class"].items()},
           "load_average": list(os.getloadavg())}
    if oracle:
        started = time.monotonic()
        run["oracle_miou"] = round(oracle_miou(model, ctx)["mean_iou"], 4)
        run["oracle_seconds"] = round(time.monotonic() - started, 1)
    log.info("%s %s n=%d r=%d: held-out %.3f, train %.3f%s, %.1f s", ctx.data.source, name, labeled, repeat,
             run["held_out_miou"], run["train_miou"],
             f", oracle {run['oracle_miou']:.3f}" if oracle else "", run["train_seconds"])
    return run


def family_plan(family: str, args: argparse.Namespace) -> QualityPlan:
    return QualityPlan(mode="ceiling experiment", labeled=args.labeled, repeats=args.repeats, methods=["decoder"],
                       steps=args.steps, budget_seconds=None, data=Path(family), cache=args.cache).check()


def family_context(family: str, args: argparse.Namespace) -> tuple[BenchmarkContext, dict[str, Any]]:
    """``family``'s shared embeddings and draws, and its description for the results."""
    plan = family_plan(family, args)
    weights, base = base_weights(plan)
    ctx = BenchmarkContext.create(plan, benchmark_data(plan), weights)
    return ctx, {"data": ctx.data.describe(), "base": base}


def run_all(args: argparse.Namespace, results: dict[str, Any], out: Path) -> None:
    """Every (repeat, n, family, variant) run into ``results["runs"]``, the largest n first and the families
    interleaved, so that a run cut short still compares both families; results rewritten after each run."""
    started = time.monotonic()
    contexts = {}
    for family in args.families.split(","):
        contexts[family], results["families"][family] = family_context(family, args)
    for repeat in range(args.repeats):
        for labeled in sorted(args.labeled, reverse=True):
            for ctx in contexts.values():
                for name in args.variants:
                    oracle = args.oracle and name == "default" and labeled == max(args.labeled)
                    results["runs"].append(run_variant(ctx, name, labeled, repeat, oracle))
                    results["seconds"] = round(time.monotonic() - started, 1)
                    write_results(results, out)


def _stat(values: list[float]) -> str:
    return _fmt(_stats(values)) if values else "–"


def summary_rows(runs: list[dict[str, Any]], key: str) -> list[str]:
    """One Markdown row per (family, labeled, variant): ``key`` as mean ± sd and each repeat's value."""
    rows = ["| family | labeled | variant | mean ± sd | per repeat | train mIoU | s/step |",
            "|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for run in runs:
        if key in run:
            groups.setdefault((run["family"], run["labeled"], run["variant"]), []).append(run)
    for (family, labeled, variant), group in groups.items():
        values = [r[key] for r in group]
        rows.append(f"| {family} | {labeled} | {variant} | {_stat(values)} | {', '.join(f'{v:.3f}' for v in values)}"
                    f" | {_stat([r['train_miou'] for r in group])} | {_stat([r['seconds_per_step'] for r in group])} |")
    return rows


def write_results(results: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    json_path.write_text(json.dumps(results, indent=1))
    machine = results["machine"]
    lines = [f"# Decoder kind near 0.5: prompt and loss ({results['started_at']})", "",
             f"- Machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores, {machine['auto_precision']}, "
             f"torch {machine['torch_version']} with {machine['torch_threads']} thread(s), commit "
             f"{machine['git_commit']}; {results['seconds']:.0f} s in all.",
             f"- Settings: {results['settings']['steps']} steps of batch 4 per run, no time cap; "
             f"{results['settings']['repeats']} repeats (draws); 12 held-out images per family; 256 px.",
             *[f"- `{k}`: {VARIANTS[k].label}" for k in results["settings"]["variants"]], "",
             "Held-out mIoU:", "", *summary_rows(results["runs"], "held_out_miou"), ""]
    if any("oracle_miou" in r for r in results["runs"]):
        lines += [f"Prompt oracle (class prompts tuned {ORACLE_STEPS} steps on each held-out image's own truth, "
                  "decoder frozen), held-out mIoU:", "", *summary_rows(results["runs"], "oracle_miou"), ""]
    md_path.write_text("\n".join(lines))
    return json_path, md_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality.ceiling", description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(SYNTHETIC_FAMILIES), help="comma-separated synthetic families")
    parser.add_argument("--labeled", default="16", help="comma-separated labeled counts (default 16)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--no-oracle", dest="oracle", action="store_false", help="skip the prompt oracle")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, required=True, help="results path without suffix")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS") or 1)))
    args.labeled = [int(n) for n in args.labeled.split(",")]
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        print(f"error: variants {unknown} are not among {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    results: dict[str, Any] = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": describe(),
                               "settings": {"steps": args.steps, "repeats": args.repeats, "labeled": args.labeled,
                                            "variants": args.variants, "oracle_steps": ORACLE_STEPS},
                               "families": {}, "runs": []}
    run_all(args, results, args.out)
    print(write_results(results, args.out)[1].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
