"""A pretrained stand-in for the official MobileSAM checkpoint, and two synthetic scene families.

Tests cannot download the official ``vit_t`` weights, and a randomly initialised encoder is a poor model
of them: its BatchNorm statistics mean nothing, so adapters that freeze the encoder learn nothing on it.
The stand-in is the seeded random ``vit_t`` trained on the *pretrain* family (encoder and statistics
first, then the mask decoder) and saved as a plain SAM state dict that ``resolve_checkpoint("vit_t",
str(path))`` and ``load_base_model`` take like any checkpoint file. Decoder-side adapters are then
trained on the *target* family, whose classes, shapes, hues, fills and background it never saw.

- pretrain (``PRETRAIN_CLASSES``): ellipses and polygons filled with stripes, checks, dots or speckle,
  each class in its own hue family, on a smooth, weakly tinted grey field.
- target (``TARGET_CLASSES``): flat magenta rings, finely striped cyan bars and finely checked yellow
  crosses on a noisy colour gradient. A third family, which no tuning sees, is ``testkit.second_family``.

Everything is generated with numpy and OpenCV from a seed: same arguments, same images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from testkit.locks import file_lock
from testkit.standin_clicks import CLICK_OPTIONS, WARMUP_STEPS, clicked_standin
from training.data.dataset import Sample, SegmentationDataset
from training.learn.config import TrainConfig
from training.learn.evaluation import evaluate
from training.learn.trainer import lr_factor, prepare_sample, train_adapter
from training.model.adapter import BaseIdentity, SamAdapter
from training.model.config import AdapterConfig
from training.model.loading import new_adapter_model
from training.model.weights import BaseWeights, resolve_checkpoint

__all__ = ["PRETRAIN_CLASSES", "TARGET_CLASSES", "pretrain_dataset", "target_dataset", "target_split",
           "build_standin", "standin_weights", "standin_report", "base_state_dict"]

log = logging.getLogger(__name__)

PRETRAIN_CLASSES = ["stripes", "checks", "dots", "speckle"]
TARGET_CLASSES = ["ring", "bar", "cross"]
# Each class keeps a hue family (OpenCV hue, 0..179): red, green, blue, yellow for pretraining; the
# target's magenta, cyan and orange-yellow lie between them. Texture and hue together name a class;
# backgrounds are weakly tinted greys (saturation marks objects, texture and hue their class).
PRETRAIN_HUES = {"stripes": 0, "checks": 60, "dots": 115, "speckle": 28}
# Bump when the scene generators or the training recipe change: cached stand-ins are then rebuilt.
RECIPE_VERSION = 5
MODEL_TYPE = "vit_t"

Colour = np.ndarray  # (3,) float32 RGB in 0..255
Scene = tuple[np.ndarray, np.ndarray]  # (H x W x 3 float32 image, C x H x W bool masks)


# ----- drawing helpers -------------------------------------------------------------------------------


def _colour_pair(rng: np.random.Generator, hue: int) -> tuple[Colour, Colour]:
    """A saturated, bright colour near ``hue`` (OpenCV's 0..179 scale, +-6) and a darker partner."""
    jittered = (hue + int(rng.integers(-6, 7))) % 180
    hsv = np.array([[[jittered, rng.integers(170, 256), rng.integers(170, 256)]]], np.uint8)
    first = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
    return first, first * np.float32(rng.uniform(0.4, 0.6))


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


def _fill(kind: str, hue: int, rng: np.random.Generator, size: tuple[int, int], scale: float = 1.0) -> np.ndarray:
    """H x W x 3 float32 texture: the pattern painted in a colour pair near ``hue``."""
    first, second = _colour_pair(rng, hue)
    pattern = _pattern(kind, rng, size, scale)[..., None]
    return first * (1 - pattern) + second * pattern


def _smooth_field(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """H x W x 3 float32 low-frequency, weakly tinted grey field: a random cells x cells grid, upsampled."""
    grey = rng.uniform(40, 215, (cells, cells, 1))
    tint = rng.uniform(-25, 25, (cells, cells, 3))
    grid = np.clip(grey + tint, 0, 255).astype(np.float32)
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
    """A random ellipse or star-convex polygon, 12-22 % of the short side in radius."""
    h, w = size
    radius = rng.uniform(0.12, 0.22) * min(h, w)
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
    image = _smooth_field(rng, size, cells=int(rng.integers(3, 7)))
    masks = np.zeros((len(PRETRAIN_CLASSES), *size), bool)
    for cls in rng.permutation(len(PRETRAIN_CLASSES)):
        name = PRETRAIN_CLASSES[cls]
        if rng.random() >= 0.15:  # sometimes a class is absent: it must then predict nothing
            _paint(image, masks, int(cls), _blob_mask(rng, size), _fill(name, PRETRAIN_HUES[name], rng, size))
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


def _bar_mask(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    length, width = rng.uniform(0.35, 0.6) * min(h, w), rng.uniform(0.08, 0.12) * min(h, w)
    cx, cy = rng.uniform(length / 2, w - length / 2), rng.uniform(length / 2, h - length / 2)
    canvas = np.zeros(size, np.uint8)
    cv2.fillPoly(canvas, [cv2.boxPoints(((cx, cy), (length, width), rng.uniform(0, 180))).astype(np.int32)], 1)
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


# class -> (mask drawer, fill pattern, hue)
TARGET_SHAPES: dict[str, tuple[Callable[[np.random.Generator, tuple[int, int]], np.ndarray], str, int]] = {
    "ring": (_ring_mask, "flat", 150),
    "bar": (_bar_mask, "stripes", 90),
    "cross": (_cross_mask, "checks", 42),
}


def _target_scene(rng: np.random.Generator, size: tuple[int, int]) -> Scene:
    h, w = size
    ramp = np.linspace(0, 1, w, dtype=np.float32)[None, :, None] * rng.uniform(-60, 60, 3).astype(np.float32)
    image = rng.uniform(70, 180, 3).astype(np.float32) + ramp + rng.normal(0, 22, (h, w, 3)).astype(np.float32)
    masks = np.zeros((len(TARGET_CLASSES), *size), bool)
    for cls in rng.permutation(len(TARGET_CLASSES)):
        if rng.random() < 0.15:  # sometimes a class is absent: it must then predict nothing
            continue
        shape, texture, hue = TARGET_SHAPES[TARGET_CLASSES[cls]]
        _paint(image, masks, int(cls), shape(rng, size), _fill(texture, hue, rng, size, scale=0.5))
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


def _recipe(image_size: int, encoder_steps: int, decoder_steps: int, seed: int, images: int,
            batch_size: int, click_steps: int = 0) -> dict:
    decoder = TrainConfig(max_steps=decoder_steps, batch_size=batch_size, decoder_lr=1e-3, prompt_lr=1e-2,
                          warmup_steps=min(10, decoder_steps), patience=decoder_steps, precision="fp32", seed=seed)
    return {"version": RECIPE_VERSION, "model_type": MODEL_TYPE, "image_size": image_size, "images": images,
            "seed": seed, "encoder_steps": encoder_steps, "encoder_lr": 1e-3, "batch_size": batch_size,
            "decoder": decoder.to_dict(), "torch": torch.__version__.split("+")[0],
            # Only with the stage: a build without it keeps the recipe, hence the cache key, it always had.
            **({"clicks": {**CLICK_OPTIONS, "steps": click_steps}} if click_steps else {})}


def _pretrain_encoder(model: SamAdapter, dataset: SegmentationDataset, recipe: dict) -> list[float]:
    """Stage 1: the encoder (BatchNorm statistics included) with a linear per-pixel class head.

    Cross-entropy over background + classes on the embedding grid, upsampled to the decoder's output
    size. Measured at 256 px: 100 steps gave a held-out head mIoU of 0.82, where 70 steps of SAM's own
    promptless-decoder loss left a full fine-tune at 0.10 (its decoder sits on a plateau for ~80 steps).
    """
    torch.manual_seed(recipe["seed"])
    rng = np.random.default_rng(recipe["seed"])
    head = torch.nn.Conv2d(model.sam.prompt_encoder.embed_dim, len(dataset.class_names) + 1, 1)
    prepared = []
    for sample in dataset.samples:
        for image, masks in ((sample.image, sample.masks), (sample.image[:, ::-1], sample.masks[:, :, ::-1])):
            ready = prepare_sample(model, np.ascontiguousarray(image), np.ascontiguousarray(masks))
            background = (1 - ready.targets.sum(0, keepdim=True)).clamp(0, 1)
            prepared.append((ready.image, torch.cat([background, ready.targets])))
    params = [p for p in model.sam.image_encoder.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=recipe["encoder_lr"], weight_decay=0.01)
    steps, losses = recipe["encoder_steps"], []
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = recipe["encoder_lr"] * lr_factor(step, steps, WARMUP_STEPS)
        chosen = rng.choice(len(prepared), min(recipe["batch_size"], len(prepared)), replace=False)
        images = torch.stack([prepared[i][0] for i in chosen])
        targets = torch.stack([prepared[i][1] for i in chosen])
        features = model.encode(images).embedding
        logits = F.interpolate(head(features), targets.shape[-2:], mode="bilinear", align_corners=False)
        loss = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(round(float(loss.detach()), 4))
    model.eval()  # also refreshes TinyViT's cached attention biases from the trained tables
    return losses


def _train_standin(recipe: dict) -> tuple[dict[str, torch.Tensor], dict, torch.Tensor]:
    """Stage 1 (encoder, see ``_pretrain_encoder``), then stage 2: the decoder and class prompts on the
    frozen encoder with ``train_adapter``. Returns (base state dict, report, the learned class prompts)."""
    size, seed = recipe["image_size"], recipe["seed"]
    train_set = pretrain_dataset(recipe["images"], size, seed=seed)
    held_out = pretrain_dataset(16, size, seed=10_000 + seed)
    classes = list(PRETRAIN_CLASSES)
    start = time.monotonic()
    stage1 = new_adapter_model(resolve_checkpoint(MODEL_TYPE, "random"), size, classes,
                               AdapterConfig(encoder="full", decoder="frozen"))
    encoder_losses = _pretrain_encoder(stage1, train_set, recipe)
    encoder_seconds = time.monotonic() - start
    # The encoder and its statistics are no longer random: freeze both while the decoder learns.
    identity = BaseIdentity(MODEL_TYPE, "standin-stage-1", size)
    model = SamAdapter(stage1.sam, identity, classes,
                       AdapterConfig(encoder="frozen", decoder="train", norm_statistics="frozen"))
    result = train_adapter(model, train_set, TrainConfig.from_dict(recipe["decoder"]))
    report = {
        "recipe": recipe,
        "encoder_seconds": round(encoder_seconds, 1),
        "encoder_losses": encoder_losses,
        "decoder": {**result.to_dict(), "losses": [round(v, 4) for v in result.losses]},
        "threads": torch.get_num_threads(),
        "held_out_mean_iou": evaluate(model, held_out, precision="fp32")["mean_iou"],
        "seconds": round(time.monotonic() - start, 1),
    }
    return base_state_dict(model), report, model.class_prompts.detach().clone()


def prompts_path(standin: str | Path) -> Path:
    """The class prompts the stand-in's decoder was trained with (the clicks stage goes on from them)."""
    return Path(standin).with_suffix(".prompts.pt")


def build_standin(cache_dir: str | Path, image_size: int = 256, encoder_steps: int = 60, decoder_steps: int = 250,
                  seed: int = 0, images: int = 24, batch_size: int = 4, click_steps: int = 0) -> Path:
    """Path of the stand-in checkpoint (a ``vit_t`` SAM state dict), building it once per argument set.

    From the seeded random ``vit_t``, on ``images`` pretrain-family scenes at ``image_size`` px, ``batch_size``
    a step: ``encoder_steps`` for the encoder and its BatchNorm statistics (dense per-pixel loss), then
    ``decoder_steps`` for the mask decoder on the frozen encoder (``train_adapter``). With ``click_steps`` > 0
    that stand-in is built (or found in the cache) first and goes on with as many steps of simulated click
    sessions (``testkit.standin_clicks``). The file is named by a hash of the recipe (``RECIPE_VERSION``,
    options, torch version): a second call returns at once. A ``.json`` sidecar holds the build report
    (``standin_report``; ``seconds``: the whole build); concurrent callers wait for one builder.
    """
    recipe = _recipe(image_size, encoder_steps, decoder_steps, seed, images, batch_size, click_steps)
    return _build(Path(cache_dir), recipe, need_prompts=False)


def _build(folder: Path, recipe: dict, need_prompts: bool) -> Path:
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"standin-{MODEL_TYPE}-{key}.pt"
    with file_lock(folder / f"{target.name}.lock"):
        # Stand-ins cached before the prompts were kept have none: one a clicks stage goes on from is rebuilt.
        if target.is_file() and target.with_suffix(".json").is_file() and (
                prompts_path(target).is_file() or not need_prompts):
            return target
        log.info("building the pretrained stand-in %s", target.name)
        if "clicks" in recipe:
            base = _build(folder, {k: v for k, v in recipe.items() if k != "clicks"}, need_prompts=True)
            state, report, prompts = clicked_standin(base, recipe)
        else:
            state, report, prompts = _train_standin(recipe)
        partial = target.with_name(f"{target.name}.{os.getpid()}.part")
        torch.save(state, partial)
        torch.save(prompts, prompts_path(target))
        os.replace(partial, target)
        target.with_suffix(".json").write_text(json.dumps(report, indent=2))
    return target


def standin_weights(path: str | Path) -> BaseWeights:
    """The stand-in as base weights, exactly as ``SAM_CHECKPOINT=<path>`` would resolve it."""
    return resolve_checkpoint(MODEL_TYPE, str(path))


def standin_report(path: str | Path) -> dict:
    """The build report saved next to a stand-in: recipe, seconds, losses, held-out pretrain mIoU."""
    return json.loads(Path(path).with_suffix(".json").read_text())
