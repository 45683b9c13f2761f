"""Mask losses: focal + dice on logits, and the IoU-prediction head's regression target."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
               alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Mean sigmoid focal loss per mask over valid pixels.

    Args:
        logits, target: K x H x W (target in [0, 1]).
        valid: H x W, 1 where the pixel is inside the image (not padding).
    Returns:
        K losses.
    """
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    weight = alpha * target + (1 - alpha) * (1 - target)
    loss = weight * ce * (1 - p_t) ** gamma
    return (loss * valid).sum(dim=(-2, -1)) / valid.sum().clamp(min=1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per mask (K x H x W inputs -> K losses); an empty target wants an empty mask."""
    prob = torch.sigmoid(logits) * valid
    target = target * valid
    inter = (prob * target).sum(dim=(-2, -1))
    total = prob.sum(dim=(-2, -1)) + target.sum(dim=(-2, -1))
    return 1 - (2 * inter + eps) / (total + eps)


def mask_iou(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded masks with the (binarised) targets; 1 when both are empty. K values."""
    pred = (logits > 0) & (valid > 0)
    truth = (target > 0.5) & (valid > 0)
    inter = (pred & truth).sum(dim=(-2, -1)).float()
    union = (pred | truth).sum(dim=(-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def mask_loss(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
              focal_weight: float, dice_weight: float, iou_weight: float) -> torch.Tensor:
    """Weighted focal + dice + IoU-prediction MSE, averaged over K masks (logits K x H x W, iou_pred K)."""
    logits = logits.float()
    loss = focal_weight * focal_loss(logits, target, valid) + dice_weight * dice_loss(logits, target, valid)
    if iou_weight:
        actual = mask_iou(logits.detach(), target, valid)
        loss = loss + iou_weight * (iou_pred.float() - actual) ** 2
    return loss.mean()
