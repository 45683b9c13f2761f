"""The training loop: class prompts + decoder (+ encoder LoRA) from a handful of labeled images."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from cachetools import LRUCache

from training.data.dataset import Sample, SegmentationDataset
from training.inference.runtime import autocast_dtype
from training.learn.config import TrainConfig
from training.learn.embeddings import TrainingEmbeddings
from training.learn.losses import mask_loss
from training.learn.windows import _Window, _window
from training.model.adapter import SamAdapter
from training.model.features import ImageFeatures

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
    """A sample in the model's frame: S x S padded image (or its stored embedding), low-resolution
    targets, valid region."""

    image: torch.Tensor | None  # 3 x S x S, normalised; None when training on stored embeddings
    targets: torch.Tensor  # C x L x L in [0, 1], L = S / 4 (the decoder's output size)
    valid: torch.Tensor  # L x L, 1 inside the image
    # The frozen base encoder's features (1 x 256 x G x G embedding, and the family's finer maps)
    embedding: ImageFeatures | torch.Tensor | None = None


def prepare_targets(model: SamAdapter, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(C x L x L targets in [0, 1], L x L valid region) of C x H x W bool masks in the model's frame."""
    h, w = model.input_size(masks.shape[1:])
    size = model.image_size
    low = size // 4
    planes = [cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) for m in masks]
    stacked = torch.from_numpy(np.stack(planes)) if planes else torch.zeros(0, h, w)
    padded = F.pad(stacked, (0, size - w, 0, size - h))
    targets = F.interpolate(padded[None], (low, low), mode="area")[0]
    valid = torch.zeros(low, low)
    valid[: math.ceil(h * low / size), : math.ceil(w * low / size)] = 1
    return targets, valid


def prepare_sample(model: SamAdapter, image: np.ndarray, masks: np.ndarray) -> PreparedSample:
    """Resize and pad an image (H x W x 3 uint8) and its masks (C x H x W bool) like SAM's input."""
    tensor, _ = model.preprocess(image)
    targets, valid = prepare_targets(model, masks)
    return PreparedSample(tensor, targets, valid)


class PreparedSource(Protocol):
    """Training data that prepares its own samples (e.g. from cached masks and stored embeddings, without
    decoding images): ``class_names``, ``len()`` and ``prepare(index, model, embeddings)``."""

    class_names: list[str]

    def __len__(self) -> int: ...

    def prepare(self, index: int, model: SamAdapter, embeddings: TrainingEmbeddings) -> PreparedSample: ...


# (rng, batch size) -> sample indices of one batch; the default is shuffled epochs.
Sampler = Callable[[np.random.Generator, int], list[int]]


class SampleCache:
    """Prepared samples, plain and horizontally flipped, computed once each.

    With ``embeddings`` (a frozen encoder) each sample carries its stored embedding instead of its
    image, and the loop does not flip (a flip is another image with its own embedding to encode) or
    jitter (it would change the embedding).
    """

    def __init__(self, model: SamAdapter, samples: list[Sample] | PreparedSource,
                 embeddings: TrainingEmbeddings | None = None, max_entries: int | None = None) -> None:
        self.model = model
        self.samples = samples
        self.embeddings = embeddings
        self._cache: dict[tuple[int, bool], PreparedSample] | LRUCache = (
            {} if max_entries is None else LRUCache(max_entries))

    def get(self, index: int, flip: bool) -> PreparedSample:
        key = (index, flip)
        if key not in self._cache and hasattr(self.samples, "prepare"):
            self._cache[key] = _to(self.samples.prepare(index, self.model, self.embeddings), self.model.device)
        if key not in self._cache:
            sample = self.samples[index]
            image, masks = sample.image, sample.masks
            if flip:
                image, masks = image[:, ::-1].copy(), masks[:, :, ::-1].copy()
            prepared = prepare_sample(self.model, image, masks)
            if self.embeddings is not None:
                prepared = PreparedSample(None, prepared.targets, prepared.valid, self.embeddings.embed(image))
            self._cache[key] = _to(prepared, self.model.device)
        return self._cache[key]

    def fill(self, flips: bool) -> None:
        """Prepare every sample (and its flip) now, so encoding is not timed as training."""
        for index in range(len(self.samples)):
            for flip in (False, True) if flips else (False,):
                self.get(index, flip)


def _photometric_jitter(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # In normalised space a gain and an offset are contrast and brightness changes.
    gain = 1 + (torch.rand(1, generator=generator).item() - 0.5) * 0.3
    offset = (torch.rand(1, generator=generator).item() - 0.5) * 0.3
    return image * gain + offset


def _sample_points(target: torch.Tensor, valid: torch.Tensor, rng: np.random.Generator, scale: float
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """One positive point inside the target and one negative outside, in input-frame pixels."""
    inside = np.argwhere((target > 0.5).cpu().numpy())
    outside = np.argwhere(((target < 0.5) & (valid > 0)).cpu().numpy())
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


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """The learning-rate schedule's factor at ``step`` of ``steps``: linear warm-up over ``warmup`` steps,
    then cosine decay to a tenth (the stand-in's build and the quality benchmark's head use it too)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# SAM's geometry: the embedding grid is the input frame / 16, the decoder's masks the input frame / 4.
_INPUT_PIXELS_PER_TOKEN = 16
_INPUT_PIXELS_PER_TARGET_PIXEL = 4


def _image_loss(model: SamAdapter, embedding: ImageFeatures, sample: PreparedSample, config: TrainConfig,
                rng: np.random.Generator) -> torch.Tensor:
    window = _window(embedding, sample, config.window_tokens, rng)
    logits, iou = model.class_logits(window.features, origin=window.origin)
    loss = mask_loss(logits[:, 0], iou[:, 0], window.targets, window.valid,
                     config.focal_weight, config.dice_weight, config.iou_weight)
    if not config.point_prompt_weight:
        return loss
    return loss + config.point_prompt_weight * _point_prompt_loss(model, window, config, rng)


def _point_prompt_loss(model: SamAdapter, window: _Window, config: TrainConfig, rng: np.random.Generator
                       ) -> torch.Tensor | float:
    """Interactive clicks go through the adapted decoder too: train that path, with and without the
    class tokens, so adapting for promptless masks does not unlearn clicking. One present class per
    image and step (each click is its own decoder pass, so more would multiply the step's cost)."""
    targets = window.targets
    present = [k for k in range(targets.shape[0]) if bool((targets[k] > 0.5).any())]
    if not present:
        return 0.0
    k = present[int(rng.integers(len(present)))]
    coords, labels = _sample_points(targets[k], window.valid, rng, _INPUT_PIXELS_PER_TARGET_PIXEL)
    if window.origin is not None:
        coords = coords + np.array(window.origin[::-1], dtype=np.float32) * _INPUT_PIXELS_PER_TOKEN
    device = window.embedding.device
    point_logits, point_iou = model.prompt_logits(
        window.features, torch.from_numpy(coords[None]).to(device), torch.from_numpy(labels[None]).to(device),
        None, [k if rng.random() < 0.5 else None], origin=window.origin,
    )
    return mask_loss(point_logits[:, 0], point_iou[:, 0], targets[k : k + 1], window.valid,
                     config.focal_weight, config.dice_weight, config.iou_weight)


@dataclass
class _Plateau:
    """Early stop: no ``min_improvement`` of the loss's moving average for ``patience`` steps."""

    config: TrainConfig
    best: float = float("inf")
    best_step: int = 0
    ema: float | None = None

    def stalled(self, step: int, value: float) -> bool:
        self.ema = value if self.ema is None else 0.9 * self.ema + 0.1 * value
        if self.ema < self.best * (1 - self.config.min_improvement):
            self.best, self.best_step = self.ema, step
            return False
        return step > self.config.warmup_steps and step - self.best_step >= self.config.patience


class _Loop:
    """One training run's state: the model, its data, the optimiser and the random streams."""

    def __init__(self, model: SamAdapter, dataset: SegmentationDataset | PreparedSource, config: TrainConfig,
                 embeddings: TrainingEmbeddings | None, sampler: Sampler | None = None,
                 max_prepared: int | None = None) -> None:
        torch.manual_seed(config.seed)
        self.model, self.config, self.size = model, config, len(dataset)
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        samples = dataset if hasattr(dataset, "prepare") else list(dataset.samples)
        self.cache = SampleCache(model, samples, embeddings, max_prepared)
        self.sampler = sampler
        # On stored embeddings a mirror image would double the encoding, and measured no better on the
        # stand-in (held-out mIoU 0.445 with flips, 0.451 without, two seeds): windows vary the view.
        self.flips = config.augment and embeddings is None
        self.optimizer = _optimizer(model, config)
        self.amp = autocast_dtype(model.device, config.precision)
        self.order: list[int] = []

    def batch(self) -> list[PreparedSample]:
        if self.sampler is not None:
            return [self.cache.get(i, flip=False) for i in self.sampler(self.rng, self.config.batch_size)]
        indices = []
        while len(indices) < min(self.config.batch_size, self.size):
            if not self.order:
                self.order = list(self.rng.permutation(self.size))
            indices.append(int(self.order.pop()))
        return [self.cache.get(i, flip=self.flips and bool(self.rng.random() < 0.5)) for i in indices]

    def embed(self, prepared: list[PreparedSample]) -> ImageFeatures:
        if prepared[0].embedding is not None:
            return ImageFeatures.cat([ImageFeatures.of(p.embedding) for p in prepared])
        jitter = self.config.augment
        images = torch.stack([_photometric_jitter(p.image, self.generator) if jitter else p.image for p in prepared])
        device = self.model.device
        with torch.autocast(device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            embeddings = self.model.encode(images.to(device))
        # The decoder stays in fp32: it is small, and bf16 transposed-convolution gradients were
        # about 10x slower than fp32 on this CPU.
        return embeddings.float()

    def step(self, step: int) -> float:
        for group in self.optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
            group["lr"] = group["base_lr"] * lr_factor(step, self.config.max_steps, self.config.warmup_steps)
        prepared = self.batch()
        embeddings = self.embed(prepared)
        loss = sum(_image_loss(self.model, embeddings.item(i), p, self.config, self.rng)
                   for i, p in enumerate(prepared)) / len(prepared)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.trainable_parameters(), self.config.grad_clip)
        self.optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss became {value} at step {step + 1}; lower the learning rate")
        return value


def train_adapter(model: SamAdapter, dataset: SegmentationDataset | PreparedSource, config: TrainConfig,
                  progress: Callable[[TrainProgress], None] | None = None,
                  embeddings: TrainingEmbeddings | None = None,
                  on_ready: Callable[[], None] | None = None, sampler: Sampler | None = None,
                  max_prepared: int | None = None) -> TrainResult:
    """Train ``model``'s adapter parts on ``dataset`` in place; returns the loss history.

    The dataset's classes must be the model's classes in the same order (``model.set_classes``).
    With a frozen image encoder, ``embeddings`` (default: in memory, no store) gives each image's
    embedding once, before the loop; the encoder never runs inside it. ``on_ready`` is called when the
    data is prepared and the loop starts. The model is left in eval mode.

    ``sampler`` draws each batch's indices (an incremental run mixes new and earlier tasks); with one, only
    the samples drawn are prepared, when first drawn, so a run's cost follows its steps, not the data's size;
    ``max_prepared`` bounds how many prepared samples are kept in memory (None: all).
    """
    if list(dataset.class_names) != list(model.class_names):
        raise ValueError(f"dataset classes {dataset.class_names} differ from the model's {model.class_names}; "
                         "call model.set_classes(dataset.class_names) first")
    if len(dataset) == 0:
        raise ValueError("cannot train on an empty dataset")
    if model.config.keeps_base_embeddings and embeddings is None:
        embeddings = TrainingEmbeddings(model, None, config.precision)
    loop = _Loop(model, dataset, config, embeddings, sampler, max_prepared)
    if embeddings is not None and sampler is None:
        loop.cache.fill(flips=False)
    log.info("training %d trainable parameters on %d images for up to %d steps%s (%s%s)",
             model.trainable_parameter_count(), len(dataset), config.max_steps,
             f" / {config.max_seconds:.0f} s" if config.max_seconds else "", "bf16" if loop.amp else "fp32",
             ", on stored embeddings" if embeddings is not None else "")
    if on_ready is not None:
        on_ready()
    model.train()
    try:
        losses, seconds, stopped = _run(loop, progress)
    finally:
        model.eval()
    window = max(1, min(5, len(losses) // 4 or 1))
    result = TrainResult(steps=len(losses), seconds=seconds, first_loss=float(np.mean(losses[:window])),
                         final_loss=float(np.mean(losses[-window:])), stopped_because=stopped, losses=losses)
    log.info("trained %d steps in %.1f s: loss %.4f -> %.4f (%s)", result.steps, result.seconds,
             result.first_loss, result.final_loss, stopped)
    return result


def _run(loop: _Loop, progress: Callable[[TrainProgress], None] | None) -> tuple[list[float], float, str]:
    """The steps, until max_steps, max_seconds or a plateau: (losses, seconds, why it stopped)."""
    config = loop.config
    losses: list[float] = []
    plateau = _Plateau(config)
    start = time.monotonic()
    for step in range(config.max_steps):
        value = loop.step(step)
        losses.append(value)
        elapsed = time.monotonic() - start
        if progress is not None:
            remaining = elapsed / (step + 1) * (config.max_steps - step - 1)
            if config.max_seconds:
                remaining = min(remaining, max(0.0, config.max_seconds - elapsed))
            progress(TrainProgress(step + 1, config.max_steps, value, elapsed, remaining))
        if plateau.stalled(step, value):
            return losses, time.monotonic() - start, "plateau"
        if config.max_seconds and elapsed >= config.max_seconds:
            return losses, time.monotonic() - start, "max_seconds"
    return losses, time.monotonic() - start, "max_steps"


def _to(sample: PreparedSample, device: torch.device) -> PreparedSample:
    if device.type == "cpu":
        return sample
    image = sample.image.to(device) if sample.image is not None else None
    embedding = ImageFeatures.of(sample.embedding).to(device) if sample.embedding is not None else None
    return PreparedSample(image, sample.targets.to(device), sample.valid.to(device), embedding)
