"""The training loop: LoRA + class prompts (+ decoder) from a handful of labeled images."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from training.data.dataset import Sample, SegmentationDataset
from training.inference.runtime import autocast_dtype
from training.learn.config import TrainConfig
from training.learn.losses import mask_loss
from training.model.adapter import SamAdapter

log = logging.getLogger(__name__)


@dataclass
class TrainProgress:
    step: int
    max_steps: int
    loss: float
    elapsed: float
    eta_seconds: float


@dataclass
class TrainResult:
    steps: int
    seconds: float
    first_loss: float
    final_loss: float
    stopped_because: str  # "max_steps", "max_seconds" or "plateau"
    losses: list[float] = field(default_factory=list)

    def to_dict(self, with_losses: bool = False) -> dict:
        out = {"steps": self.steps, "seconds": round(self.seconds, 2), "first_loss": self.first_loss,
               "final_loss": self.final_loss, "stopped_because": self.stopped_because}
        if with_losses:
            out["losses"] = self.losses
        return out


@dataclass
class PreparedSample:
    """A sample in the model's frame: S x S padded image, low-resolution targets, valid region."""

    image: torch.Tensor  # 3 x S x S, normalised
    targets: torch.Tensor  # C x L x L in [0, 1], L = S / 4 (the decoder's output size)
    valid: torch.Tensor  # L x L, 1 inside the image


def prepare_sample(model: SamAdapter, image: np.ndarray, masks: np.ndarray) -> PreparedSample:
    """Resize and pad an image (H x W x 3 uint8) and its masks (C x H x W bool) like SAM's input."""
    tensor, (h, w) = model.preprocess(image)
    size = model.image_size
    low = size // 4
    planes = [cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) for m in masks]
    stacked = torch.from_numpy(np.stack(planes)) if planes else torch.zeros(0, h, w)
    padded = F.pad(stacked, (0, size - w, 0, size - h))
    targets = F.interpolate(padded[None], (low, low), mode="area")[0]
    valid = torch.zeros(low, low)
    valid[: math.ceil(h * low / size), : math.ceil(w * low / size)] = 1
    return PreparedSample(tensor, targets, valid)


class SampleCache:
    """Prepared samples, plain and horizontally flipped, computed once each."""

    def __init__(self, model: SamAdapter, samples: list[Sample]) -> None:
        self.model = model
        self.samples = samples
        self._cache: dict[tuple[int, bool], PreparedSample] = {}

    def get(self, index: int, flip: bool) -> PreparedSample:
        key = (index, flip)
        if key not in self._cache:
            sample = self.samples[index]
            image, masks = sample.image, sample.masks
            if flip:
                image, masks = image[:, ::-1].copy(), masks[:, :, ::-1].copy()
            self._cache[key] = prepare_sample(self.model, image, masks)
        return self._cache[key]


def _photometric_jitter(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # In normalised space a gain and an offset are contrast and brightness changes.
    gain = 1 + (torch.rand(1, generator=generator).item() - 0.5) * 0.3
    offset = (torch.rand(1, generator=generator).item() - 0.5) * 0.3
    return image * gain + offset


def _sample_points(target: torch.Tensor, valid: torch.Tensor, rng: np.random.Generator, scale: float
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """One positive point inside the target and one negative outside, in input-frame pixels."""
    inside = np.argwhere((target > 0.5).numpy())
    outside = np.argwhere(((target < 0.5) & (valid > 0)).numpy())
    if len(inside) == 0:
        return None
    points = [inside[rng.integers(len(inside))]]
    labels = [1]
    if len(outside):
        points.append(outside[rng.integers(len(outside))])
        labels.append(0)
    else:
        points.append(points[0])
        labels.append(1)
    yx = np.array(points, dtype=np.float32)
    return (yx[:, ::-1] + 0.5) * scale, np.array(labels)


def _optimizer(model: SamAdapter, config: TrainConfig) -> torch.optim.Optimizer:
    encoder = [p for p in model.sam.image_encoder.parameters() if p.requires_grad]
    decoder = [p for p in model.sam.mask_decoder.parameters() if p.requires_grad]
    groups = [{"params": [model.class_prompts], "lr": config.prompt_lr, "weight_decay": 0.0}]
    if encoder:
        groups.append({"params": encoder, "lr": config.lr, "weight_decay": config.weight_decay})
    if decoder:
        groups.append({"params": decoder, "lr": config.decoder_lr, "weight_decay": config.weight_decay})
    return torch.optim.AdamW(groups)


def _lr_factor(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _image_loss(model: SamAdapter, embedding: torch.Tensor, sample: PreparedSample, config: TrainConfig,
                rng: np.random.Generator) -> torch.Tensor:
    logits, iou = model.class_logits(embedding)
    loss = mask_loss(logits[:, 0], iou[:, 0], sample.targets, sample.valid,
                     config.focal_weight, config.dice_weight, config.iou_weight)
    if not config.point_prompt_weight:
        return loss
    # Interactive clicks go through the same adapted encoder and decoder: train that path too, with and
    # without the class tokens, so adapting for promptless masks does not unlearn clicking.
    scale = model.image_size / sample.targets.shape[-1]
    rows, coords, labels, classes = [], [], [], []
    for k in range(sample.targets.shape[0]):
        picked = _sample_points(sample.targets[k], sample.valid, rng, scale)
        if picked is None:
            continue
        rows.append(k)
        coords.append(picked[0])
        labels.append(picked[1])
        classes.append(k if rng.random() < 0.5 else None)
    if not rows:
        return loss
    device = embedding.device
    point_logits, point_iou = model.prompt_logits(
        embedding, torch.from_numpy(np.stack(coords)).to(device), torch.from_numpy(np.stack(labels)).to(device),
        None, classes,
    )
    point_loss = mask_loss(point_logits[:, 0], point_iou[:, 0], sample.targets[rows], sample.valid,
                           config.focal_weight, config.dice_weight, config.iou_weight)
    return loss + config.point_prompt_weight * point_loss


def train_adapter(model: SamAdapter, dataset: SegmentationDataset, config: TrainConfig,
                  progress: Callable[[TrainProgress], None] | None = None) -> TrainResult:
    """Train ``model``'s adapter parts on ``dataset`` in place; returns the loss history.

    The dataset's classes must be the model's classes in the same order (``model.set_classes``).
    The model is left in eval mode.
    """
    if list(dataset.class_names) != list(model.class_names):
        raise ValueError(f"dataset classes {dataset.class_names} differ from the model's {model.class_names}; "
                         "call model.set_classes(dataset.class_names) first")
    if len(dataset) == 0:
        raise ValueError("cannot train on an empty dataset")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    device = model.device
    cache = SampleCache(model, list(dataset.samples))
    optimizer = _optimizer(model, config)
    amp = autocast_dtype(device, config.precision)
    log.info("training %d trainable parameters on %d images for up to %d steps%s (%s)",
             model.trainable_parameter_count(), len(dataset), config.max_steps,
             f" / {config.max_seconds:.0f} s" if config.max_seconds else "", "bf16" if amp else "fp32")
    model.train()
    losses: list[float] = []
    order: list[int] = []
    best, best_step, ema = float("inf"), 0, None
    stopped = "max_steps"
    start = time.monotonic()
    try:
        for step in range(config.max_steps):
            for group in optimizer.param_groups:
                group.setdefault("base_lr", group["lr"])
                group["lr"] = group["base_lr"] * _lr_factor(step, config)
            batch = []
            while len(batch) < min(config.batch_size, len(dataset)):
                if not order:
                    order = list(rng.permutation(len(dataset)))
                batch.append(int(order.pop()))
            prepared = [cache.get(i, flip=config.augment and bool(rng.random() < 0.5)) for i in batch]
            images = torch.stack([
                _photometric_jitter(p.image, generator) if config.augment else p.image for p in prepared
            ]).to(device)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                embeddings = model.encode(images)
            # The decoder stays in fp32: it is small, and bf16 transposed-convolution gradients were
            # about 10x slower than fp32 on this CPU.
            embeddings = embeddings.float()
            loss = sum(
                _image_loss(model, embeddings[i : i + 1], _to(p, device), config, rng)
                for i, p in enumerate(prepared)
            ) / len(prepared)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), config.grad_clip)
            optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"training loss became {value} at step {step + 1}; lower the learning rate")
            losses.append(value)
            elapsed = time.monotonic() - start
            if progress is not None:
                per_step = elapsed / (step + 1)
                remaining = per_step * (config.max_steps - step - 1)
                if config.max_seconds:
                    remaining = min(remaining, max(0.0, config.max_seconds - elapsed))
                progress(TrainProgress(step + 1, config.max_steps, value, elapsed, remaining))
            ema = value if ema is None else 0.9 * ema + 0.1 * value
            if ema < best * (1 - config.min_improvement):
                best, best_step = ema, step
            elif step > config.warmup_steps and step - best_step >= config.patience:
                stopped = "plateau"
                break
            if config.max_seconds and elapsed >= config.max_seconds:
                stopped = "max_seconds"
                break
    finally:
        model.eval()
    window = max(1, min(5, len(losses) // 4 or 1))
    result = TrainResult(
        steps=len(losses),
        seconds=time.monotonic() - start,
        first_loss=float(np.mean(losses[:window])),
        final_loss=float(np.mean(losses[-window:])),
        stopped_because=stopped,
        losses=losses,
    )
    log.info("trained %d steps in %.1f s: loss %.4f -> %.4f (%s)", result.steps, result.seconds,
             result.first_loss, result.final_loss, stopped)
    return result


def _to(sample: PreparedSample, device: torch.device) -> PreparedSample:
    if device.type == "cpu":
        return sample
    return PreparedSample(sample.image.to(device), sample.targets.to(device), sample.valid.to(device))
