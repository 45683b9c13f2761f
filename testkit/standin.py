"""A pretrained stand-in for the official MobileSAM checkpoint, and two synthetic scene families.

Tests cannot download the official ``vit_t`` weights, and a randomly initialised encoder is a poor model
of them (its BatchNorm statistics mean nothing, so adapters that freeze the encoder learn nothing on
it). The stand-in is a random ``vit_t`` fully fine-tuned on the *pretrain* family and saved as a plain
SAM state dict: ``resolve_checkpoint("vit_t", str(path))`` and ``load_base_model`` take it like any
checkpoint file. Decoder-side adapters are then trained on the *target* family, whose classes,
shapes, fills and background the stand-in never saw.

- pretrain family (``PRETRAIN_CLASSES``): ellipses and polygons filled with stripes, checks, dots
  or speckle in random colours, on a smooth blotchy colour field. Colour says nothing about the class:
  the encoder has to learn texture.
- target family (``TARGET_CLASSES``): rings (flat colour), bars (fine stripes along the bar) and
  crosses (fine checks) in random colours, on a noisy gradient.

Everything is generated with numpy and OpenCV from a seed: same arguments, same images.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from training.data.dataset import Sample, SegmentationDataset
from training.learn.config import TrainConfig
from training.learn.evaluation import evaluate
from training.learn.trainer import train_adapter
from training.model.adapter import SamAdapter
from training.model.config import AdapterConfig
from training.model.loading import new_adapter_model
from training.model.weights import BaseWeights, resolve_checkpoint

__all__ = [
    "PRETRAIN_CLASSES",
    "TARGET_CLASSES",
    "pretrain_dataset",
    "target_dataset",
    "target_split",
    "build_standin",
    "standin_weights",
    "standin_report",
    "base_state_dict",
]

log = logging.getLogger(__name__)

PRETRAIN_CLASSES = ["stripes", "checks", "dots", "speckle"]
TARGET_CLASSES = ["ring", "bar", "cross"]
# Bump when the scene generators or the training recipe change: cached stand-ins are then rebuilt.
RECIPE_VERSION = 1
MODEL_TYPE = "vit_t"

Colour = np.ndarray  # (3,) float32 RGB in 0..255
Scene = tuple[np.ndarray, np.ndarray]  # (H x W x 3 float32 image, C x H x W bool masks)


# ----- drawing helpers -------------------------------------------------------------------------------


def _colour_pair(rng: np.random.Generator) -> tuple[Colour, Colour]:
    """A random saturated colour and a partner that differs from it clearly in brightness."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(120, 256), rng.integers(150, 256)]]], np.uint8)
    first = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
    factor = rng.uniform(0.25, 0.45) if rng.random() < 0.5 else rng.uniform(1.6, 2.2)
    second = np.clip(first * factor + (0 if factor < 1 else 30), 0, 255).astype(np.float32)
    return first, second


def _rotated_grid(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (u, v) in a frame rotated by a random angle, random phase."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    cos, sin = np.cos(angle), np.sin(angle)
    return xx * cos + yy * sin + rng.uniform(0, 50), -xx * sin + yy * cos + rng.uniform(0, 50)


def _pattern(kind: str, rng: np.random.Generator, size: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """H x W float32 pattern in {0, 1}: ``stripes``, ``checks``, ``dots``, ``speckle`` or ``flat``.

    ``scale`` multiplies the period (pixels): the target family uses finer patterns than pretraining.
    """
    u, v = _rotated_grid(rng, size)
    if kind == "stripes":
        period = rng.uniform(6, 10) * scale
        return ((u / period) % 1.0 < 0.5).astype(np.float32)
    if kind == "checks":
        period = rng.uniform(8, 12) * scale
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == "dots":
        period = rng.uniform(7, 11) * scale
        du, dv = (u % period) - period / 2, (v % period) - period / 2
        return (du * du + dv * dv < (0.3 * period) ** 2).astype(np.float32)
    if kind == "speckle":
        cells = rng.random((size[0] // 2 + 1, size[1] // 2 + 1)) < 0.5
        return np.kron(cells, np.ones((2, 2)))[: size[0], : size[1]].astype(np.float32)
    if kind == "flat":
        return np.zeros(size, np.float32)
    raise ValueError(f"unknown pattern kind {kind!r}")


def _fill(kind: str, rng: np.random.Generator, size: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """H x W x 3 float32 texture: the pattern painted in a random colour pair."""
    first, second = _colour_pair(rng)
    pattern = _pattern(kind, rng, size, scale)[..., None]
    return first * (1 - pattern) + second * pattern


def _smooth_field(rng: np.random.Generator, size: tuple[int, int], cells: int, low: float, high: float
                  ) -> np.ndarray:
    """H x W x 3 float32 low-frequency colour field: a random cells x cells grid, bicubic upsampled."""
    grid = rng.uniform(low, high, (cells, cells, 3)).astype(np.float32)
    return cv2.resize(grid, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)


def _paint(image: np.ndarray, masks: np.ndarray, cls: int, region: np.ndarray, fill: np.ndarray) -> None:
    """Draw ``region`` of class ``cls`` on top: later objects hide earlier ones, masks stay exclusive."""
    if not region.any():
        return
    image[region] = fill[region]
    masks[:, region] = False
    masks[cls] |= region


# ----- the pretrain family --------------------------------------------------------------------------


def _blob_mask(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A random ellipse or star-convex polygon, 10-20 % of the short side in radius."""
    h, w = size
    radius = rng.uniform(0.1, 0.2) * min(h, w)
    cx, cy = rng.uniform(radius, w - radius), rng.uniform(radius, h - radius)
    canvas = np.zeros(size, np.uint8)
    if rng.random() < 0.5:
        axes = (int(radius), int(radius * rng.uniform(0.5, 1.0)))
        cv2.ellipse(canvas, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    else:
        count = int(rng.integers(5, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, count))
        radii = radius * rng.uniform(0.6, 1.0, count)
        points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(canvas, [points.astype(np.int32)], 1)
    return canvas.astype(bool)


def _pretrain_scene(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    image = _smooth_field(rng, size, cells=int(rng.integers(3, 7)), low=30, high=225)
    masks = np.zeros((len(PRETRAIN_CLASSES), *size), bool)
    for cls in rng.permutation(len(PRETRAIN_CLASSES)):
        copies = 0 if rng.random() < 0.15 else 1 + int(rng.random() < 0.3)
        for _ in range(copies):
            _paint(image, masks, int(cls), _blob_mask(rng, size), _fill(PRETRAIN_CLASSES[cls], rng, size))
    return image, masks


# ----- the target family ----------------------------------------------------------------------------


def _ring_mask(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    outer = rng.uniform(0.12, 0.2) * min(h, w)
    thickness = max(6, int(outer * rng.uniform(0.35, 0.5)))
    centre = (int(rng.uniform(outer, w - outer)), int(rng.uniform(outer, h - outer)))
    canvas = np.zeros(size, np.uint8)
    cv2.circle(canvas, centre, int(outer - thickness / 2), 1, thickness)
    return canvas.astype(bool)


def _bar_points(rng: np.random.Generator, size: tuple[int, int], length: float, width: float) -> np.ndarray:
    """Corners of a rotated length x width rectangle that fits the image, as int32 (4, 2) x, y."""
    h, w = size
    reach = length / 2
    cx, cy = rng.uniform(reach, w - reach), rng.uniform(reach, h - reach)
    angle = rng.uniform(0, 180)
    return cv2.boxPoints(((cx, cy), (length, width), angle)).astype(np.int32)


def _bar_mask(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    short = min(size)
    points = _bar_points(rng, size, rng.uniform(0.35, 0.6) * short, rng.uniform(0.08, 0.12) * short)
    canvas = np.zeros(size, np.uint8)
    cv2.fillPoly(canvas, [points], 1)
    return canvas.astype(bool)


def _cross_mask(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    arm = rng.uniform(0.12, 0.2) * min(h, w)
    width = rng.uniform(0.07, 0.1) * min(h, w)
    cx, cy = rng.uniform(arm, w - arm), rng.uniform(arm, h - arm)
    angle = rng.uniform(0, 90)
    canvas = np.zeros(size, np.uint8)
    for turn in (0, 90):
        box = cv2.boxPoints(((cx, cy), (2 * arm, width), angle + turn)).astype(np.int32)
        cv2.fillPoly(canvas, [box], 1)
    return canvas.astype(bool)


TARGET_SHAPES: dict[str, tuple[Callable[[np.random.Generator, tuple[int, int]], np.ndarray], str]] = {
    "ring": (_ring_mask, "flat"),
    "bar": (_bar_mask, "stripes"),
    "cross": (_cross_mask, "checks"),
}


def _target_scene(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    h, w = size
    ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None] * rng.uniform(-60, 60, 3).astype(np.float32)
    image = rng.uniform(70, 180, 3).astype(np.float32) + ramp + rng.normal(0, 22, (h, w, 3)).astype(np.float32)
    masks = np.zeros((len(TARGET_CLASSES), *size), bool)
    for cls in rng.permutation(len(TARGET_CLASSES)):
        if rng.random() < 0.15:  # sometimes a class is absent: it must then predict nothing
            continue
        shape, texture = TARGET_SHAPES[TARGET_CLASSES[cls]]
        _paint(image, masks, int(cls), shape(rng, size), _fill(texture, rng, size, scale=0.5))
    return image, masks


# ----- datasets -------------------------------------------------------------------------------------


def _dataset(scene: Callable[[np.random.Generator, tuple[int, int]], Scene], class_names: list[str],
             count: int, size: int, seed: int, prefix: str) -> SegmentationDataset:
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(count):
        image, masks = scene(rng, (size, size))
        noisy = image + rng.normal(0, 6, image.shape)
        samples.append(Sample(np.clip(noisy, 0, 255).astype(np.uint8), masks, f"{prefix}_{seed}_{index:03d}"))
    return SegmentationDataset(list(class_names), samples)


def pretrain_dataset(count: int, size: int = 256, seed: int = 0) -> SegmentationDataset:
    """``count`` size x size pretrain-family scenes (classes ``PRETRAIN_CLASSES``)."""
    return _dataset(_pretrain_scene, PRETRAIN_CLASSES, count, size, seed, "pretrain")


def target_dataset(count: int, size: int = 256, seed: int = 0) -> SegmentationDataset:
    """``count`` size x size target-family scenes (classes ``TARGET_CLASSES``)."""
    return _dataset(_target_scene, TARGET_CLASSES, count, size, seed, "target")


def target_split(train_images: int = 8, held_out: int = 16, size: int = 256, seed: int = 0
                 ) -> tuple[SegmentationDataset, SegmentationDataset]:
    """(train, held-out) target-family sets from disjoint seeds; ``train_images`` must be 1..8."""
    if not isinstance(train_images, int) or not 1 <= train_images <= 8:
        raise ValueError(f"train_images must be an integer in 1..8 (few-shot), got {train_images!r}")
    return target_dataset(train_images, size, seed=1000 + seed), target_dataset(held_out, size, seed=2000 + seed)


# ----- the stand-in checkpoint ----------------------------------------------------------------------


def base_state_dict(model: SamAdapter) -> dict[str, torch.Tensor]:
    """The plain SAM state dict of a fully tuned model (BatchNorm statistics included), on CPU.

    Only adapters without LoRA layers qualify (encoder ``full`` or ``frozen``, decoder ``train`` or
    ``frozen``): their ``sam`` module holds the tuned weights under the checkpoint's own key names.
    """
    state = model.sam.state_dict()
    lora = [name for name in state if "lora_" in name]
    if lora:
        raise ValueError(f"{len(lora)} LoRA tensors (e.g. {lora[0]}) in the model; merge them before saving a base")
    return {name: tensor.detach().cpu().clone() for name, tensor in state.items()}


def _recipe(image_size: int, steps: int, seed: int, images: int, batch_size: int) -> dict:
    train = TrainConfig(max_steps=steps, batch_size=batch_size, lr=1e-3, decoder_lr=1e-3, prompt_lr=1e-2,
                        warmup_steps=min(10, steps), patience=steps, precision="fp32", seed=seed)
    return {"version": RECIPE_VERSION, "model_type": MODEL_TYPE, "image_size": image_size, "images": images,
            "seed": seed, "train": train.to_dict(), "torch": torch.__version__.split("+")[0]}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (a sidecar file): concurrent builders wait for the first."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _train_standin(recipe: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Fully fine-tune a random vit_t on the pretrain family; returns (base state dict, report)."""
    size, seed = recipe["image_size"], recipe["seed"]
    train_set = pretrain_dataset(recipe["images"], size, seed=seed)
    held_out = pretrain_dataset(16, size, seed=10_000 + seed)
    weights = resolve_checkpoint(MODEL_TYPE, "random")
    model = new_adapter_model(weights, size, list(PRETRAIN_CLASSES), AdapterConfig(encoder="full", decoder="train"))
    start = time.monotonic()
    result = train_adapter(model, train_set, TrainConfig.from_dict(recipe["train"]))
    seconds = time.monotonic() - start
    report = {
        "recipe": recipe,
        "train_seconds": round(seconds, 1),
        "train": result.to_dict(),
        "held_out_mean_iou": evaluate(model, held_out, precision="fp32")["mean_iou"],
        "threads": torch.get_num_threads(),
    }
    return base_state_dict(model), report


def build_standin(cache_dir: str | Path, image_size: int = 256, steps: int = 120, seed: int = 0,
                  images: int = 48, batch_size: int = 4) -> Path:
    """Path of the stand-in checkpoint (a ``vit_t`` SAM state dict), building it once per argument set.

    The file is named by a hash of the arguments and the recipe (``RECIPE_VERSION``, training options,
    torch version), so a second call with the same arguments returns at once; a ``.json`` sidecar next
    to it holds the build report (``standin_report``). Concurrent callers wait for one builder. The
    build is a full fine-tune (encoder ``full``, decoder ``train``) of the seeded random ``vit_t`` on
    ``images`` pretrain-family scenes at ``image_size`` px for ``steps`` steps of ``batch_size``.
    """
    recipe = _recipe(image_size, steps, seed, images, batch_size)
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"standin-{MODEL_TYPE}-{key}.pt"
    with _locked(folder / f"{target.name}.lock"):
        if target.is_file() and target.with_suffix(".json").is_file():
            return target
        log.info("building the pretrained stand-in %s (%d steps at %d px)", target.name, steps, image_size)
        state, report = _train_standin(recipe)
        partial = target.with_name(f"{target.name}.{os.getpid()}.part")
        torch.save(state, partial)
        os.replace(partial, target)
        target.with_suffix(".json").write_text(json.dumps(report, indent=2))
    return target


def standin_weights(path: str | Path) -> BaseWeights:
    """The stand-in as base weights, exactly as ``SAM_CHECKPOINT=<path>`` would resolve it."""
    return resolve_checkpoint(MODEL_TYPE, str(path))


def standin_report(path: str | Path) -> dict:
    """The build report saved next to a stand-in: recipe, seconds, losses, held-out pretrain mIoU."""
    return json.loads(Path(path).with_suffix(".json").read_text())
