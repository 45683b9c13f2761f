"""The promptless baseline: SAM's frozen encoder and a small trained upsampling head, no class prompts.

What a seed-style promptless decoder does: per-pixel class scores (background + C classes) from the
image embedding alone, two 2x transposed convolutions up to the decoder's output grid (S / 4), one
softmax over the classes. It never sees SAM's mask decoder, so it shows what samloop's prompts and
decoder adapter add over plain features. Trained on the same stored embeddings, targets, flips,
step budget and schedule shape as ``train_adapter``; scored by the same pixel-summed IoU as
``training.learn.evaluation.evaluate``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.data.dataset import SegmentationDataset
from training.inference.predictor import ImageEmbedding
from training.learn.config import TrainConfig
from training.learn.embeddings import TrainingEmbeddings
from training.learn.trainer import PreparedSample, SampleCache, TrainResult, lr_factor
from training.model.adapter import SamAdapter
from training.model.features import ImageFeatures


class PromptlessHead(nn.Module):
    """B x 256 x G x G embeddings -> B x (C + 1) x 4G x 4G logits (channel 0 is background)."""

    def __init__(self, classes: int, dim: int = 256, hidden: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(dim, hidden, 3, padding=1), nn.GELU(),
            nn.ConvTranspose2d(hidden, hidden // 2, 2, stride=2), nn.GELU(),
            nn.ConvTranspose2d(hidden // 2, hidden // 2, 2, stride=2), nn.GELU(),
            nn.Conv2d(hidden // 2, classes + 1, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


def _loss(logits: torch.Tensor, sample: PreparedSample) -> torch.Tensor:
    """Soft cross-entropy over background + classes inside the image, plus the classes' soft Dice
    (Dice keeps small objects from drowning in background pixels, as in the adapter's mask loss)."""
    targets = sample.targets
    background = (1 - targets.sum(0, keepdim=True)).clamp(0, 1)
    full = torch.cat([background, targets])
    valid = sample.valid
    log_probs = F.log_softmax(logits, dim=0)
    cross_entropy = -((full * log_probs).sum(0) * valid).sum() / valid.sum().clamp(min=1)
    probs = log_probs.exp()[1:] * valid
    inter = (probs * targets).flatten(1).sum(1)
    dice = 1 - (2 * inter + 1) / (probs.flatten(1).sum(1) + targets.flatten(1).sum(1) + 1)
    return cross_entropy + dice.mean()


def train_head(base: SamAdapter, dataset: SegmentationDataset, config: TrainConfig,
               embeddings: TrainingEmbeddings) -> tuple[PromptlessHead, TrainResult]:
    """Train a fresh head on ``dataset`` over the frozen ``base`` encoder's stored embeddings.

    Honours ``max_steps``, ``max_seconds``, ``batch_size``, ``decoder_lr`` (with the trainer's warm-up
    and cosine decay to a tenth), ``weight_decay``, ``augment`` (flips) and ``seed``.
    """
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    head = PromptlessHead(len(dataset.class_names), base.sam.prompt_encoder.embed_dim).to(base.device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.decoder_lr, weight_decay=config.weight_decay)
    cache = SampleCache(base, list(dataset.samples), embeddings)
    cache.fill(flips=config.augment)
    losses: list[float] = []
    start, stopped = time.monotonic(), "max_steps"
    for step in range(config.max_steps):
        for group in optimizer.param_groups:
            group["lr"] = config.decoder_lr * lr_factor(step, config.max_steps, config.warmup_steps)
        chosen = rng.choice(len(dataset), min(config.batch_size, len(dataset)), replace=False)
        batch = [cache.get(int(i), flip=config.augment and bool(rng.random() < 0.5)) for i in chosen]
        logits = head(torch.cat([ImageFeatures.of(p.embedding).embedding for p in batch]))
        loss = sum(_loss(logits[k], p) for k, p in enumerate(batch)) / len(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if config.max_seconds and time.monotonic() - start >= config.max_seconds:
            stopped = "max_seconds"
            break
    head.eval()
    window = max(1, min(5, len(losses) // 4 or 1))
    result = TrainResult(len(losses), time.monotonic() - start, float(np.mean(losses[:window])),
                         float(np.mean(losses[-window:])), stopped, losses)
    return head, result


@torch.inference_mode()
def label_map(head: PromptlessHead, base: SamAdapter, embedding: ImageEmbedding) -> np.ndarray:
    """H x W uint8 class map at the original resolution (0 background, k = class k - 1)."""
    logits = head(embedding.embedding.to(base.device))[0]  # (C + 1) x L x L
    scores = base.upscale(logits[:, None], embedding.input_size, embedding.original_size)
    return scores.argmax(0).to(torch.uint8).cpu().numpy()


def score_label_maps(maps: Sequence[np.ndarray], dataset: SegmentationDataset) -> dict:
    """``evaluate``'s numbers for class maps: pixels summed over images, per class IoU and Dice,
    classes with no pixel in prediction or truth left out of the means."""
    names = dataset.class_names
    inter, pred_sum, true_sum = np.zeros(len(names)), np.zeros(len(names)), np.zeros(len(names))
    for predicted, sample in zip(maps, dataset.samples, strict=True):
        for k in range(len(names)):
            pred, truth = predicted == k + 1, sample.masks[k]
            inter[k] += np.logical_and(pred, truth).sum()
            pred_sum[k] += pred.sum()
            true_sum[k] += truth.sum()
    per_class = {}
    for k, name in enumerate(names):
        union = pred_sum[k] + true_sum[k] - inter[k]
        if union:
            per_class[name] = {"iou": float(inter[k] / union),
                               "dice": float(2 * inter[k] / (pred_sum[k] + true_sum[k]))}
    ious = [v["iou"] for v in per_class.values()]
    dices = [v["dice"] for v in per_class.values()]
    return {"mean_iou": float(np.mean(ious)) if ious else 0.0, "mean_dice": float(np.mean(dices)) if dices else 0.0,
            "per_class": per_class, "images": len(dataset)}
