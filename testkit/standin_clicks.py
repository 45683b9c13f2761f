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
from pathlib import Path

import cv2
import numpy as np
import torch

from training.data.dataset import SegmentationDataset
from training.inference.predictor import Predictor
from training.learn.clicks import evaluate_clicks
from training.learn.evaluation import evaluate
from training.learn.losses import dice_loss, focal_loss, mask_iou, mask_loss
from training.learn.trainer import lr_factor, prepare_sample
from training.model.adapter import SamAdapter
from training.model.config import AdapterConfig
from training.model.loading import new_adapter_model

__all__ = ["CLICK_OPTIONS", "CLICK_STEPS", "train_clicks", "click_scores", "clicked_standin"]

# The clicks stage's options but ``steps`` (see ``train_clicks``), from benchmarks/results/experiments/
# standin-clicks-2026-12-07-*.json: short sessions on more images a step beat long ones at the same cost;
# lr 2e-3 and ``corrupt`` 0.5 gave the best runs but also collapses (2 of 5 and 4 of 5 runs: a blob
# several times too large around the click, IoU@1 0.25), lr 4e-3 collapsed: 1e-3 without them never did.
CLICK_OPTIONS = {"lr": 1e-3, "batch_size": 3, "clicks": 4, "graded": 1, "box_fraction": 0.25, "interior": 0.5,
                 "class_weight": 0.5, "best_only": False, "corrupt": 0.0}

# The clicking stand-in's steps, as the gate tests and the quality benchmark build it: own-family IoU@1 0.40-0.47,
# NoC@90 19.7 (benchmarks/results/experiments/standin-clicks-2026-12-07-build200-recipe.json); 142-145 s of build.
CLICK_STEPS = 200

# Every stage of the stand-in's build warms its learning rate up over this many steps.
WARMUP_STEPS = 10
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


def _corrupted(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """K x L x L bool: each object (K x L x L bool) with a plausible earlier prediction's error: its edge moved
    in or out by 1-3 pixels, or shifted, then a disc cut out of it or added beside it."""
    out = []
    for plane in truth.astype(np.uint8):
        kind, size = rng.integers(3), int(rng.integers(1, 4))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * size + 1, 2 * size + 1))
        if kind == 0:
            plane = cv2.dilate(plane, kernel)
        elif kind == 1:
            plane = cv2.erode(plane, kernel)
        else:
            plane = np.roll(plane, tuple(rng.integers(-size, size + 1, 2)), axis=(0, 1))
        rows, cols = np.nonzero(truth[len(out)])
        pick = rng.integers(len(rows))
        disc = np.zeros_like(plane)
        cv2.circle(disc, (int(cols[pick] + rng.integers(-6, 7)), int(rows[pick] + rng.integers(-6, 7))),
                   int(rng.integers(2, 7)), 1, -1)
        out.append(np.where(disc > 0, rng.random() < 0.5, plane > 0))
    return np.stack(out)


def _as_logits(masks: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """K x 1 x L x L logits of K bool masks, blurred and scaled like a decoder's own (its scale varies)."""
    soft = np.stack([cv2.GaussianBlur(m.astype(np.float32), (3, 3), 0) for m in masks])
    return torch.from_numpy((soft * 2 - 1) * float(rng.uniform(4, 16)))[:, None]


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
    boxes = coords = labels = mask_input = None
    if rng.random() < options["corrupt"]:
        # A session that starts later: a near-miss mask fed back and a correction of it. The decoder's own
        # feedback is too poor early in training for it to learn to keep what the mask says and fix where clicked.
        coords, labels = _first_points(truth, rng, options["interior"])
        earlier = _corrupted(truth, rng)
        extra, extra_labels = _next_points(earlier, truth, rng, options["interior"])
        coords, labels = np.concatenate([coords, extra], 1), np.concatenate([labels, extra_labels], 1)
        mask_input = _as_logits(earlier, rng)
    elif rng.random() < options["box_fraction"]:
        boxes = torch.from_numpy(_noisy_boxes(truth, rng))
    else:
        coords, labels = _first_points(truth, rng, options["interior"])
    # Gradients stop between clicks, so a correction that is not trained needs only a forward pass: the
    # first prompt and ``graded`` random corrections are trained, which halves a step's cost.
    graded = {0, *rng.choice(np.arange(1, options["clicks"]), options["graded"], replace=False).tolist()}
    total = torch.zeros(())
    for click in range(options["clicks"]):
        points, kinds = (None, None) if coords is None else (torch.from_numpy(coords), torch.from_numpy(labels))
        with torch.set_grad_enabled(click in graded):
            logits, iou = model.prompt_logits(task.embedding, points, kinds, boxes, mask_input=mask_input,
                                              multimask=boxes is None and coords.shape[1] == 1)
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
    besides its first prompt), ``best_only`` (``_prompt_loss``), ``corrupt`` (sessions that start from a
    near miss of the object fed back as the mask, ``_corrupted``). The encoder is not touched.
    """
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
                group["lr"] = options["lr"] * group["lr_scale"] * lr_factor(step, options["steps"], WARMUP_STEPS)
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


def clicked_standin(base: Path, recipe: dict) -> tuple[dict[str, torch.Tensor], dict, torch.Tensor]:
    """The stand-in ``base`` (built without clicks) trained by ``train_clicks`` with ``recipe["clicks"]``, and
    its clicks scored on held-out scenes of its own family and of the target family. Returns (state dict,
    report: the base's with ``clicks`` added and ``seconds`` the whole build's, class prompts)."""
    from testkit import standin  # imported late: standin imports this module

    start, size, seed = time.monotonic(), recipe["image_size"], recipe["seed"]
    model = new_adapter_model(standin.standin_weights(base), size, list(standin.PRETRAIN_CLASSES),
                              AdapterConfig(encoder="frozen", decoder="train", norm_statistics="frozen"))
    with torch.no_grad():
        model.class_prompts.copy_(torch.load(standin.prompts_path(base)))
    losses = train_clicks(model, standin.pretrain_dataset(recipe["images"], size, seed=seed), recipe["clicks"], seed)
    seconds = time.monotonic() - start
    own = standin.pretrain_dataset(16, size, seed=10_000 + seed)  # the build's held-out scenes
    clicks = {"seconds": round(seconds, 1), "losses": losses, "own": click_scores(model, own),
              # target_split's held-out scenes: the family adapters learn, a domain shift for the stand-in
              "target": click_scores(model, standin.target_dataset(16, size, seed=2000 + seed))}
    clicks["score_seconds"] = round(time.monotonic() - start - seconds, 1)
    report = {**standin.standin_report(base), "recipe": recipe, "clicks": clicks, "base": base.name,
              "held_out_mean_iou": evaluate(model, own, precision="fp32")["mean_iou"]}
    report["seconds"] = round(report["seconds"] + time.monotonic() - start, 1)
    return standin.base_state_dict(model), report, model.class_prompts.detach().clone()
