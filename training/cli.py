"""Offline command line: train, evaluate, predict, list versions, and write a synthetic dataset.

``python -m training <command> --help`` explains every option. Base-model options default to
the same environment variables the backend reads (SAM_MODEL, SAM_CHECKPOINT, SAM_IMAGE_SIZE).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np

from training.data.coco import load_coco
from training.data.dataset import DatasetError, SegmentationDataset
from training.data.images import IMAGE_SUFFIXES, ImageError, load_image
from training.data.mask_folder import load_mask_folder
from training.data.synthetic import synthetic_dataset
from training.drawing import DEFAULT_OPACITY, check_opacity, overlay
from training.inference.predictor import Predictor
from training.learn.comparisons import (
    DEFAULT_PICTURE_CLICKS,
    DEFAULT_PICTURE_TASKS,
    Comparison,
    model_decoders,
    picture_tasks,
    write_comparisons,
)
from training.learn.evaluation import evaluate
from training.model.adapter import SamAdapter
from training.model.artifact import AdapterMismatchError, read_artifact
from training.model.base_models import BASE_MODELS
from training.model.loading import load_adapter_model
from training.model.weights import CheckpointError, resolve_checkpoint
from training.registry import RegistryError, open_registry
from training.train_command import TRAIN_DESCRIPTION, add_train_options, train_settings, train_through_pipeline


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""


# ----- arguments ----------------------------------------------------------------------------------
def _add_base_model(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("base model")
    group.add_argument("--model", default=os.environ.get("SAM_MODEL", "vit_t"), choices=sorted(BASE_MODELS),
                       help="SAM variant (default: $SAM_MODEL or vit_t = MobileSAM)")
    group.add_argument("--checkpoint", default=os.environ.get("SAM_CHECKPOINT"),
                       help="checkpoint path, 'random' for random weights (tests/demos), or omit to download "
                            "the official one (default: $SAM_CHECKPOINT)")
    group.add_argument("--image-size", type=int, default=int(os.environ.get("SAM_IMAGE_SIZE", "1024")),
                       help="model input size in px, a multiple of 16 (default: $SAM_IMAGE_SIZE or 1024)")
    group.add_argument("--model-cache", type=Path, default=None,
                       help="where official checkpoints are cached (default: $SAMLOOP_MODEL_CACHE)")


def _add_dataset(parser: argparse.ArgumentParser, split: bool = False) -> None:
    group = parser.add_argument_group("dataset (a mask folder or COCO JSON)")
    group.add_argument("--images", type=Path, help="folder of images (mask-folder layout, or COCO image root)")
    group.add_argument("--masks", type=Path, help="folder of class-id mask PNGs (pixel value = class id, 0 = bg)")
    group.add_argument("--labels", type=Path, help="labels file with 'id name' lines")
    group.add_argument("--coco", type=Path, help="COCO instances JSON")
    if split:
        group.add_argument("--coco-val", type=Path,
                           help="a separate COCO JSON to evaluate the published adapter on (reported only)")


def _add_adapter_source(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("adapter (a file, or a registry version)")
    group.add_argument("--adapter", type=Path, help="adapter .safetensors file")
    group.add_argument("--registry", help="registry directory or redis:// URL")
    group.add_argument("--project", help="project id in the registry")
    group.add_argument("--version", type=int, help="registry version (default: the active one)")


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _opacity(text: str) -> float:
    try:
        return check_opacity(float(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from exc


def _add_opacity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--opacity", type=_opacity, default=DEFAULT_OPACITY,
                        help=f"share of the class colour in a masked pixel of a picture, 0 to 1 "
                             f"(default {DEFAULT_OPACITY})")


def _add_comparisons(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("click pictures: [image | truth | SAM's decoder | the adapter]")
    group.add_argument("--comparisons", type=Path, metavar="DIR",
                       help="write a picture of simulated clicks on one object per task into DIR (default: none)")
    group.add_argument("--comparison-tasks", type=_positive_int, default=DEFAULT_PICTURE_TASKS, metavar="N",
                       help=f"how many tasks (the first ones with an object) get a picture "
                            f"(default {DEFAULT_PICTURE_TASKS})")
    group.add_argument("--comparison-clicks", type=_positive_int, default=DEFAULT_PICTURE_CLICKS, metavar="K",
                       help=f"each decoder's mask after K simulated clicks (default {DEFAULT_PICTURE_CLICKS})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train an adapter from a mask folder or COCO file, as the service does",
                           description=TRAIN_DESCRIPTION)
    _add_base_model(train)
    _add_dataset(train, split=True)
    add_train_options(train)

    ev = sub.add_parser("evaluate", help="evaluate an adapter on a dataset (per-class IoU and Dice)")
    _add_base_model(ev)
    _add_dataset(ev, split=False)
    _add_adapter_source(ev)
    _add_comparisons(ev)
    _add_opacity(ev)

    pr = sub.add_parser("predict", help="predict masks for a folder of images")
    _add_base_model(pr)
    _add_adapter_source(pr)
    pr.add_argument("--input", type=Path, required=True, help="folder of images")
    pr.add_argument("--output", type=Path, required=True,
                    help="folder for <name>_mask.png (class ids) and <name>_overlay.png (original | prediction)")
    _add_opacity(pr)

    ve = sub.add_parser("versions", help="list a project's adapter versions; optionally activate one")
    ve.add_argument("--registry", required=True, help="registry directory or redis:// URL")
    ve.add_argument("--project", required=True)
    ve.add_argument("--activate", type=int, help="make this version active (rollback)")

    sy = sub.add_parser("synth", help="write a synthetic 3-class dataset in the mask-folder layout")
    sy.add_argument("--out", type=Path, required=True)
    sy.add_argument("--count", type=int, default=8)
    sy.add_argument("--size", type=int, default=256)
    sy.add_argument("--seed", type=int, default=0)
    return parser


# ----- helpers ---------------------------------------------------------------------------------------
def _base_weights(args: argparse.Namespace):
    return resolve_checkpoint(args.model, args.checkpoint, args.model_cache)


def _load_dataset(args: argparse.Namespace) -> SegmentationDataset:
    if args.coco:
        return load_coco(args.coco, args.images)
    if args.images and args.masks and args.labels:
        return load_mask_folder(args.images, args.masks, args.labels)
    raise CliError("give a dataset: --images, --masks and --labels for a mask folder, or --coco FILE")


def _adapter_bytes(args: argparse.Namespace) -> bytes:
    if args.adapter:
        try:
            return args.adapter.read_bytes()
        except OSError as exc:
            raise CliError(f"cannot read adapter {args.adapter}: {exc.strerror}") from exc
    if args.registry and args.project:
        return open_registry(args.registry).load(args.project, args.version)[1]
    raise CliError("give an adapter: --adapter FILE, or --registry and --project [--version]")


def _load_model(args: argparse.Namespace) -> SamAdapter:
    data = _adapter_bytes(args)
    base = read_artifact(data).header.base
    # The adapter says what it was trained on; command-line defaults should not contradict it silently.
    if base.image_size != args.image_size:
        logging.getLogger(__name__).info("using the adapter's image size %s", base.image_size)
        args.image_size = base.image_size
    return load_adapter_model(data, _base_weights(args), args.image_size)


# ----- commands -------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> dict:
    if not args.out and not args.registry:
        raise CliError("nowhere to save the adapter: give --out FILE and/or --registry")
    settings = train_settings(args)
    dataset = _load_dataset(args)
    validation = load_coco(args.coco_val, args.images) if args.coco_val else None
    summary, artifact = train_through_pipeline(args, settings, dataset)
    if validation is not None and artifact:
        model = load_adapter_model(artifact, _base_weights(args), args.image_size)
        summary["validation"] = evaluate(model, validation)
    return summary


def cmd_evaluate(args: argparse.Namespace) -> dict:
    model = _load_model(args)
    dataset = _load_dataset(args)
    missing = [n for n in dataset.class_names if n not in model.class_names]
    if missing:
        logging.getLogger(__name__).warning("classes %s are not in the adapter; not evaluated", missing)
    result = evaluate(model, dataset)
    if args.comparisons is not None:
        result["comparisons"] = [c.to_dict() for c in _write_comparisons(args, model, dataset)]
    return result


def _write_comparisons(args: argparse.Namespace, model: SamAdapter, dataset: SegmentationDataset
                       ) -> list[Comparison]:
    """``--comparisons``: click pictures of the first ``--comparison-tasks`` tasks with an object."""
    chosen = dataset.subset(picture_tasks(dataset, args.comparison_tasks))
    # Only the pictured images are encoded again; SAM's decoder and the adapter's share them.
    embeddings = Predictor(model).embed([s.image for s in chosen.samples], batch_size=1)
    adapter, sam = model_decoders(model, embeddings)
    try:
        return write_comparisons(chosen, adapter, sam, args.comparisons, args.comparison_clicks, args.opacity)
    except OSError as exc:
        raise CliError(f"cannot write pictures to {args.comparisons}: {exc}") from exc


def _side_by_side(image: np.ndarray, label_map: np.ndarray, opacity: float) -> np.ndarray:
    return np.concatenate([image, overlay(image, label_map, opacity)], axis=1)


def cmd_predict(args: argparse.Namespace) -> dict:
    model = _load_model(args)
    predictor = Predictor(model)
    files = sorted(p for p in args.input.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
        if args.input.is_dir() else []
    if not files:
        raise CliError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {args.input}")
    args.output.mkdir(parents=True, exist_ok=True)
    written, failed = [], {}
    for path in files:
        try:
            image = load_image(path)
        except ImageError as exc:
            failed[path.name] = str(exc)
            continue
        prediction = predictor.predict_classes(predictor.embed([image])[0])
        cv2.imwrite(str(args.output / f"{path.stem}_mask.png"), prediction.label_map)
        cv2.imwrite(str(args.output / f"{path.stem}_overlay.png"),
                    cv2.cvtColor(_side_by_side(image, prediction.label_map, args.opacity), cv2.COLOR_RGB2BGR))
        written.append({"image": path.name, "scores": prediction.scores})
    return {"classes": {i + 1: n for i, n in enumerate(model.class_names)}, "predicted": written, "failed": failed}


def cmd_versions(args: argparse.Namespace) -> dict:
    registry = open_registry(args.registry)
    if args.activate is not None:
        registry.activate(args.project, args.activate)
    return {"project": args.project, "versions": [
        {"version": v.version, "active": v.active, "created": v.created,
         "validation": (v.metadata.get("validation") or {}).get("mean_iou")}
        for v in registry.versions(args.project)
    ]}


def cmd_synth(args: argparse.Namespace) -> dict:
    dataset = synthetic_dataset(args.count, args.size, seed=args.seed)
    images, masks = args.out / "images", args.out / "masks"
    try:
        images.mkdir(parents=True, exist_ok=True)
        masks.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot write to {args.out}: {exc.strerror}") from exc
    for sample in dataset.samples:
        cv2.imwrite(str(images / f"{sample.name}.png"), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
        ids = np.zeros(sample.image.shape[:2], np.uint8)
        for k in range(len(dataset.class_names)):
            ids[sample.masks[k]] = k + 1
        cv2.imwrite(str(masks / f"{sample.name}.png"), ids)
    (args.out / "labels.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(dataset.class_names)))
    return {"images": str(images), "masks": str(masks), "labels": str(args.out / "labels.txt"), "count": args.count}


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "versions": cmd_versions,
            "synth": cmd_synth}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        result = COMMANDS[args.command](args)
    except (CliError, CheckpointError, DatasetError, ImageError, AdapterMismatchError, RegistryError,
            ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=float))
    return 0
