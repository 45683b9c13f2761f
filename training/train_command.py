"""``python -m training train``: a dataset on disk trained through the service's own pipeline.

The run is ``training.pipeline.run.run_project``, as in the rq job: with ``--registry`` it warm-starts
from the project's active version and trains incrementally on the images new or changed since, holds out
the same images run after run, and publishes the candidate active only if the mask gate passes; the
click gate picks the decoder for clicks. Without ``--registry`` every run is a full one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from tqdm import tqdm

from training.data.dataset import SegmentationDataset
from training.labelstudio.incremental import SyncResult
from training.learn.trainer import TrainProgress
from training.model.config import ADAPTER_KINDS, DECODER_MODES, ENCODER_MODES
from training.model.kinds import ENCODER_TUNINGS, kind_of
from training.pipeline.local_dataset import sync_dataset
from training.pipeline.run import RunServices, run_project
from training.pipeline.settings import JobSettings
from training.registry import open_registry

__all__ = ["TRAIN_DESCRIPTION", "add_train_options", "train_settings", "train_through_pipeline"]

TRAIN_DESCRIPTION = __doc__.split("\n\n")[1].replace("\n", " ")


def add_train_options(parser: argparse.ArgumentParser) -> None:
    defaults = JobSettings()
    adapter = parser.add_argument_group("adapter")
    adapter.add_argument("--adapter-kind", choices=sorted(ADAPTER_KINDS),
                         help="decoder (frozen encoder, trained on stored embeddings: the service's default) or "
                              "encoder (encoder LoRA); default: encoder when --encoder lora/train, else decoder")
    adapter.add_argument("--encoder", choices=ENCODER_MODES, help="image encoder: lora, full or frozen")
    adapter.add_argument("--decoder", choices=DECODER_MODES, help="mask decoder: lora, train or frozen")
    adapter.add_argument("--lora-rank", type=int, help="LoRA rank (default 8)")
    adapter.add_argument("--lora-alpha", type=float, help="LoRA alpha (default 16)")
    adapter.add_argument("--lora-targets", help="comma-separated encoder modules for LoRA (default qkv)")
    loop = parser.add_argument_group("training (the service's rules)")
    loop.add_argument("--steps", type=int,
                      help=f"step budget of this run (default: {defaults.incremental_steps} after a warm start, else "
                           f"{defaults.steps_per_image} per training image within [{defaults.min_steps}, "
                           f"{defaults.max_steps}])")
    loop.add_argument("--full", action="store_true", help="retrain from scratch even where a warm start is possible")
    loop.add_argument("--max-seconds", type=float, default=defaults.train_max_seconds,
                      help=f"wall-clock budget in seconds (default {defaults.train_max_seconds:.0f})")
    loop.add_argument("--batch-size", type=int, default=defaults.batch_size)
    loop.add_argument("--lr", type=float, help="learning rate (default: the trainer's)")
    loop.add_argument("--seed", type=int, default=0)
    loop.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    loop.add_argument("--no-augment", action="store_true", help="turn off flips and brightness jitter")
    loop.add_argument("--holdout-every", type=int, default=defaults.holdout_every,
                      help=f"hold out one image in N for the promotion gate, at most {defaults.holdout_cap}, none "
                           f"below {defaults.holdout_min} images (default {defaults.holdout_every})")
    loop.add_argument("--tolerance", type=float, default=defaults.promote_tolerance,
                      help="promote unless held-out mean IoU drops by more than this or the sample's noise "
                           f"(default {defaults.promote_tolerance})")
    out = parser.add_argument_group("output")
    out.add_argument("--out", type=Path, help="write the adapter this run published to this .safetensors file")
    out.add_argument("--registry", help="publish to this registry (directory or redis:// URL); later runs "
                                        "warm-start from its active version")
    out.add_argument("--project", default="cli", help="registry project id (default 'cli')")
    out.add_argument("--data-dir", type=Path, default=Path(os.environ.get("SAMLOOP_DATA_DIR") or "data"),
                     help="task cache and embedding store (default: $SAMLOOP_DATA_DIR or ./data)")


def train_settings(args: argparse.Namespace) -> JobSettings:
    """The run's settings from the command line (raises ValueError naming a bad option)."""
    options: dict[str, Any] = {"encoder": args.encoder, "decoder": args.decoder, "lora_rank": args.lora_rank,
                               "lora_alpha": args.lora_alpha}
    if args.lora_targets is not None:
        options["lora_targets"] = [t for t in args.lora_targets.split(",") if t]
    options = {k: v for k, v in options.items() if v is not None}
    kind = args.adapter_kind or (kind_of(ENCODER_TUNINGS[args.encoder]).name if args.encoder else "decoder")
    train_options = {"seed": args.seed, "augment": not args.no_augment,
                     **({"lr": args.lr} if args.lr is not None else {})}
    steps = {"min_steps": args.steps, "max_steps": args.steps, "incremental_steps": args.steps} if args.steps else {}
    return JobSettings(model_type=args.model, checkpoint=args.checkpoint or "", image_size=args.image_size,
                       model_cache=str(args.model_cache or ""), data_dir=str(args.data_dir),
                       precision=args.precision, batch_size=args.batch_size, train_max_seconds=args.max_seconds,
                       adapter_kind=kind, adapter_options=options, train_options=train_options,
                       holdout_every=args.holdout_every, promote_tolerance=args.tolerance, **steps)


class ConsoleProgress:
    """A run's stages as lines on stderr, its training steps as a progress bar."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def stage(self, stage: str, message: str, **fields: Any) -> None:
        if stage != "training" or self.bar is None:
            self.close()
            print(f"{stage}: {message}", file=sys.stderr)
        if stage == "training" and self.bar is None and fields.get("max_steps"):
            self.bar = tqdm(total=fields["max_steps"], unit="step", file=sys.stderr)

    def on_train(self, progress: TrainProgress) -> None:
        if self.bar is not None:
            self.bar.update(progress.step - self.bar.n)
            self.bar.set_postfix(loss=f"{progress.loss:.4f}", eta=f"{progress.eta_seconds:.0f}s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def train_through_pipeline(args: argparse.Namespace, settings: JobSettings, dataset: SegmentationDataset
                           ) -> tuple[dict[str, Any], bytes]:
    """Run the pipeline on ``dataset``: its outcome and the adapter it published (or the active one)."""
    progress = ConsoleProgress()
    with tempfile.TemporaryDirectory(prefix="samloop-cli-") as scratch:
        registry = open_registry(args.registry or str(Path(scratch) / "registry"), keep_last=settings.keep_versions)

        def sync(project: str, _settings: JobSettings, _progress: Any) -> SyncResult:
            progress.stage("reading", f"{len(dataset)} images of {args.images or args.coco}")
            return sync_dataset(dataset, Path(settings.data_dir) / "dataset-cache" / f"project-{project}")

        try:
            outcome = run_project(args.project, settings, RunServices(registry, progress, full=args.full, sync=sync))
        finally:
            progress.close()
        version = outcome.get("version") or outcome.get("active_version")
        artifact = registry.load(args.project, version)[1] if version else b""
    if args.out and artifact:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(artifact)
        outcome["adapter"] = str(args.out)
    outcome["adapter_bytes"] = len(artifact)
    if args.registry:
        outcome["registry"] = args.registry
    return outcome, artifact
