"""The stand-in's clicks stage: SAM's decoder trained on simulated interactive sessions.

A decoder trained only on promptless class masks and single random points never learns to follow
clicks (IoU after one click 0.03-0.06 on its own scenes). This stage trains it as SAM was trained
(Kirillov et al. 2023, appendix A): the first prompt is a point in the object or its noisy box; each
later point is drawn from the error region of the previous prediction, with that prediction's
low-resolution logits fed back as the mask prompt; focal + dice on the chosen mask (the best of three
after a lone point, which is ambiguous) and an IoU-prediction loss. Gradients stop between clicks.

The promptless class masks share the decoder (its first mask token and hypernetwork), so every step
also takes the class-mask loss: without it, clicking would be learned at their expense.

Coordinates: low-resolution mask pixels (row, column) map to input-frame pixels (x, y) as
((column + 0.5) * 4, (row + 0.5) * 4), the decoder's 4x upsampling.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from training.data.dataset import SegmentationDataset
from training.inference.predictor import Predictor
from training.learn.clicks import evaluate_clicks
from training.learn.losses import dice_loss, focal_loss, mask_iou, mask_loss
from training.learn.trainer import prepare_sample
from training.model.adapter import SamAdapter

__all__ = ["CLICK_OPTIONS", "train_clicks", "click_scores", "clicks_stage"]

# The clicks stage's options but ``steps`` (see ``train_clicks``); the best measured in a few tries.
CLICK_OPTIONS = {"lr": 1e-3, "batch_size": 2, "clicks": 6, "graded": 2, "box_fraction": 0.25, "interior": 0.5,
                 "class_weight": 0.5, "best_only": False}

_PIXELS_PER_MASK_PIXEL = 4  # the decoder's masks are the input frame / 4
# SAM's box noise: each coordinate moves by N(0, 10 % of the box side), at most 20 px.
_BOX_NOISE, _BOX_NOISE_MAX = 0.1, 20.0


@dataclass
class _Task:
    """One training image on the frozen encoder: its embedding and the masks to click on."""

    embedding: torch.Tensor  # 1 x 256 x G x G
    classes: torch.Tensor  # C x L x L class targets in [0, 1] (promptless loss; absent classes empty)
    objects: torch.Tensor  # K x L x L, the present classes' targets (K >= 1)
    valid: torch.Tensor  # L x L, 1 inside the image


def _tasks(model: SamAdapter, dataset: SegmentationDataset) -> list[_Task]:
    """Each sample and its mirror image, embedded once (the encoder is frozen)."""
    tasks = []
    for sample in dataset.samples:
        for image, masks in ((sample.image, sample.masks), (sample.image[:, ::-1], sample.masks[:, :, ::-1])):
            ready = prepare_sample(model, np.ascontiguousarray(image), np.ascontiguousarray(masks))
            with torch.no_grad():
                embedding = model.encode(ready.image[None]).embedding
            present = (ready.targets > 0.5).flatten(1).any(1)
            if bool(present.any()):
                tasks.append(_Task(embedding, ready.targets, ready.targets[present], ready.valid))
    return tasks


def _to_input_frame(rows_cols: np.ndarray) -> np.ndarray:
    """N x 2 (row, column) mask pixels -> N x 2 float32 (x, y) input-frame pixels."""
    return ((rows_cols[:, ::-1] + 0.5) * _PIXELS_PER_MASK_PIXEL).astype(np.float32)


def _interior(region: np.ndarray) -> np.ndarray:
    """(row, column) of the pixel of ``region`` (H x W bool) farthest from its edge: the clicker's choice."""
    distance = cv2.distanceTransform(np.pad(region, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    return np.array(np.unravel_index(int(np.argmax(distance)), distance.shape))


def _pick(region: np.ndarray, rng: np.random.Generator, interior: float) -> np.ndarray:
    """A pixel of ``region``: the most interior one with probability ``interior``, else a uniform one."""
    if rng.random() < interior:
        return _interior(region)
    candidates = np.argwhere(region)
    return candidates[rng.integers(len(candidates))]


def _first_points(truth: np.ndarray, rng: np.random.Generator, interior: float) -> tuple[np.ndarray, np.ndarray]:
    """K x 1 x 2 (x, y) input-frame points, one in each of K objects (K x L x L bool), and K x 1 labels 1."""
    picks = np.stack([_pick(t, rng, interior) for t in truth])
    return _to_input_frame(picks)[:, None], np.ones((len(truth), 1), np.int64)


def _noisy_boxes(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """K x 4 (x0, y0, x1, y1) input-frame boxes around K objects (K x L x L bool), with SAM's noise."""
    boxes = []
    for plane in truth:
        rows, cols = np.nonzero(plane)
        box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32) * _PIXELS_PER_MASK_PIXEL
        side = np.array([box[2] - box[0], box[3] - box[1]] * 2)
        boxes.append(box + np.clip(rng.normal(0, _BOX_NOISE * side), -_BOX_NOISE_MAX, _BOX_NOISE_MAX))
    return np.stack(boxes).astype(np.float32)


def _next_points(prediction: np.ndarray, truth: np.ndarray, rng: np.random.Generator, interior: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One correction per object: K x 1 x 2 points in the error of K predictions (K x L x L bool) and their
    K x 1 labels (1 where the object was missed). The larger error (by its most interior pixel's depth)
    is corrected, as the evaluation's clicker does; an object without error gets a positive inside it."""
    points, labels = [], []
    for predicted, target in zip(prediction, truth, strict=True):
        missed, extra = target & ~predicted, predicted & ~target
        depth = [float(cv2.distanceTransform(np.pad(e, 1).astype(np.uint8), cv2.DIST_L2, 5).max())
                 for e in (missed, extra)]
        positive = depth[0] > depth[1] or not extra.any()
        region = missed if positive else extra
        points.append(_pick(region if region.any() else target, rng, interior))
        labels.append(int(positive))
    return _to_input_frame(np.stack(points))[:, None], np.array(labels, np.int64)[:, None]


def _prompt_loss(logits: torch.Tensor, iou: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor,
                 best_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, K x L x L logits of the mask each object continues with) for K x M candidate masks.

    ``best_only`` is SAM's rule: of several candidates only the best (lowest focal + dice) is trained.
    The stand-in's scenes hold no part/whole ambiguity, so every candidate may learn the object: measured,
    IoU after one click 0.46 with all three trained (200 steps) against 0.26 with the best only (150).
    The IoU head learns on all; the continuing mask is the one inference chooses, the highest predicted IoU."""
    count, candidates = logits.shape[:2]
    flat, targets = logits.flatten(0, 1).float(), truth.repeat_interleave(candidates, 0)
    per_mask = (2.0 * focal_loss(flat, targets, valid) + dice_loss(flat, targets, valid)).view(count, candidates)
    actual = mask_iou(flat.detach(), targets, valid).view(count, candidates)
    mask_term = per_mask.min(dim=1).values if best_only else per_mask.mean(dim=1)
    loss = mask_term.mean() + ((iou.float() - actual) ** 2).mean()
    chosen = logits[torch.arange(count), iou.argmax(dim=1)]
    return loss, chosen.detach()


def _session_loss(model: SamAdapter, task: _Task, rng: np.random.Generator, options: dict) -> torch.Tensor:
    """Mean loss over one simulated session of ``options["clicks"]`` prompts on every object of ``task``."""
    truth = (task.objects > 0.5).numpy()
    boxes = coords = labels = None
    if rng.random() < options["box_fraction"]:
        boxes = torch.from_numpy(_noisy_boxes(truth, rng))
    else:
        coords, labels = _first_points(truth, rng, options["interior"])
    # Gradients stop between clicks, so a correction that is not trained needs only a forward pass: the
    # first prompt and ``graded`` random corrections are trained, which halves a step's cost.
    graded = {0, *rng.choice(np.arange(1, options["clicks"]), options["graded"], replace=False).tolist()}
    mask_input, total = None, torch.zeros(())
    for click in range(options["clicks"]):
        points, kinds = (None, None) if coords is None else (torch.from_numpy(coords), torch.from_numpy(labels))
        with torch.set_grad_enabled(click in graded):
            logits, iou = model.prompt_logits(task.embedding, points, kinds, boxes, mask_input=mask_input,
                                              multimask=boxes is None and click == 0)
            loss, chosen = _prompt_loss(logits, iou, task.objects, task.valid, options["best_only"])
        if click in graded:
            total = total + loss
        mask_input = chosen[:, None]
        new_coords, new_labels = _next_points((chosen > 0).numpy() & (task.valid > 0).numpy(), truth, rng,
                                              options["interior"])
        coords = new_coords if coords is None else np.concatenate([coords, new_coords], axis=1)
        labels = new_labels if labels is None else np.concatenate([labels, new_labels], axis=1)
    return total / len(graded)


def _class_loss(model: SamAdapter, task: _Task) -> torch.Tensor:
    """The promptless class-mask loss of ``train_adapter`` (its default weights), on the whole image."""
    logits, iou = model.class_logits(task.embedding)
    return mask_loss(logits[:, 0], iou[:, 0], task.classes, task.valid, 2.0, 1.0, 1.0)


def _parameters(model: SamAdapter) -> list[dict]:
    """Optimiser groups: SAM's decoder and the prompt encoder's learned embeddings (point types, mask
    downscaling: random until now), and the class prompts, which must keep up with the changing decoder."""
    for parameter in model.sam.prompt_encoder.parameters():
        parameter.requires_grad_(True)
    tuned = list(model.sam.mask_decoder.parameters()) + list(model.sam.prompt_encoder.parameters())
    return [{"params": tuned, "lr_scale": 1.0}, {"params": [model.class_prompts], "lr_scale": 10.0}]


def train_clicks(model: SamAdapter, dataset: SegmentationDataset, options: dict, seed: int) -> list[float]:
    """Train ``model``'s decoder in place for clicks and class masks; returns the loss of each step.

    ``options``: ``steps``, ``lr``, ``batch_size`` (images a step), ``clicks`` (prompts per session: the
    first point or box and its corrections), ``box_fraction`` (sessions that start from a box),
    ``interior`` (how often a point is the clicker's most interior pixel rather than a uniform one) and
    ``class_weight`` (the promptless class-mask loss's weight), ``graded`` (corrections a session trains
    besides its first prompt), ``best_only`` (``_prompt_loss``). The encoder is not touched.
    """
    from testkit.standin import _lr_factor  # the other stages' schedule; imported late: standin imports us

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tasks = _tasks(model, dataset)
    groups = _parameters(model)
    optimizer = torch.optim.AdamW(groups, lr=options["lr"], weight_decay=0.01)
    losses = []
    model.train()
    try:
        for step in range(options["steps"]):
            for group in optimizer.param_groups:
                group["lr"] = options["lr"] * group["lr_scale"] * _lr_factor(step, options["steps"])
            chosen = rng.choice(len(tasks), min(options["batch_size"], len(tasks)), replace=False)
            loss = sum(_session_loss(model, tasks[i], rng, options)
                       + options["class_weight"] * _class_loss(model, tasks[i]) for i in chosen) / len(chosen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
            optimizer.step()
            losses.append(round(float(loss.detach()), 4))
    finally:
        model.eval()
        for parameter in model.sam.prompt_encoder.parameters():
            parameter.requires_grad_(False)
    return losses


def click_scores(model: SamAdapter, dataset: SegmentationDataset, max_clicks: int = 20) -> dict:
    """SAM's decoder of ``model`` under the simulated clicker, asked as SAM (no class tokens), as a later
    adapter's ``base`` decoder answers: ``{"objects", "iou_at", "noc85", "noc90", "nof90"}``."""
    predictor = Predictor(model, precision="fp32", clicks="adapter")
    result = evaluate_clicks(predictor, dataset, max_clicks=max_clicks, class_prompts=False)
    return {key: result[key] for key in ("objects", "iou_at", "noc85", "noc90", "nof90")}


def clicks_stage(model: SamAdapter, train_set: SegmentationDataset, own: SegmentationDataset,
                 target: SegmentationDataset, options: dict, seed: int) -> dict:
    """Run ``train_clicks`` and score the clicks on held-out scenes of the stand-in's own family and of
    the target family; the build report's ``clicks`` section."""
    start = time.monotonic()
    losses = train_clicks(model, train_set, options, seed)
    seconds = time.monotonic() - start
    return {"seconds": round(seconds, 1), "losses": losses, "own": click_scores(model, own),
            "target": click_scores(model, target), "score_seconds": round(time.monotonic() - start - seconds, 1)}
