"""Pictures of masks: class colours, translucent overlays, click markers, labelled panels side by side.

Shared by ``python -m training predict`` (image | prediction) and the click comparisons
(``training.learn.comparisons``), so every picture samloop writes uses one palette and one opacity.
Images are H x W x 3 uint8 RGB (as ``training.data.images.load_image`` gives them); ``write_png``
converts to the BGR order OpenCV writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from training.learn.clicks import Click

# Overlay colours per class index (RGB); class indices beyond the table cycle through it.
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [145, 30, 180],
                    [70, 240, 240], [240, 50, 230], [245, 130, 48]], np.uint8)
# The colour's share in a coloured pixel: strong enough to read on any image, weak enough to see through.
DEFAULT_OPACITY = 0.55
POSITIVE_CLICK = (0, 255, 0)
NEGATIVE_CLICK = (255, 0, 0)
MARKER_OUTLINE = (0, 0, 0)
# White between panels and behind their labels, so the panels' edges stay visible on dark images.
BACKGROUND = 255
PANEL_GAP = 4
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TEXT_PAD = 3


def check_opacity(opacity: float) -> float:
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be between 0 and 1, got {opacity!r}")
    return float(opacity)


def class_colour(index: int) -> np.ndarray:
    """The RGB uint8 colour (3,) of class ``index`` (0-based, in the dataset's or adapter's class order)."""
    return PALETTE[index % len(PALETTE)]


def _blend(image: np.ndarray, colours: np.ndarray, where: np.ndarray, opacity: float) -> np.ndarray:
    opacity = check_opacity(opacity)
    blended = ((1.0 - opacity) * image + opacity * colours).astype(np.uint8)
    return np.where(where[..., None], blended, image)


def tint(image: np.ndarray, mask: np.ndarray, colour: np.ndarray, opacity: float = DEFAULT_OPACITY) -> np.ndarray:
    """``image`` (H x W x 3 uint8) with the pixels of ``mask`` (H x W bool) blended with ``colour`` (RGB)."""
    return _blend(image, np.asarray(colour, np.float64), np.asarray(mask, bool), opacity)


def overlay(image: np.ndarray, label_map: np.ndarray, opacity: float = DEFAULT_OPACITY) -> np.ndarray:
    """``image`` with each class's pixels in its colour; ``label_map`` H x W class ids, 0 background."""
    ids = label_map.astype(np.int64)
    return _blend(image, PALETTE[(ids - 1) % len(PALETTE)], ids > 0, opacity)


def marker_radius(width: int, height: int) -> int:
    """Click markers grow with the image so they stay visible; 2 px at the smallest."""
    return max(2, min(width, height) // 80)


def draw_clicks(panel: np.ndarray, clicks: Iterable[Click]) -> np.ndarray:
    """Draws ``clicks`` ((x, y) pixels of ``panel``) in place as dots: green positive, red negative.

    Each dot has a dark rim; the clicked pixel itself always keeps its click's colour, even where a
    later dot covers an earlier one's rim. Returns ``panel``.
    """
    clicks = list(clicks)
    radius = marker_radius(panel.shape[1], panel.shape[0])
    for click in clicks:
        cv2.circle(panel, (click.x, click.y), radius + 1, MARKER_OUTLINE, -1)
    for click in clicks:
        cv2.circle(panel, (click.x, click.y), radius, POSITIVE_CLICK if click.positive else NEGATIVE_CLICK, -1)
    for click in clicks:
        panel[click.y, click.x] = POSITIVE_CLICK if click.positive else NEGATIVE_CLICK
    return panel


def _font_scale(width: int) -> float:
    # Readable at 256 px panels and not towering over 1024 px ones; labels wider than a panel are clipped.
    return min(1.2, max(0.3, width / 640))


def _text_size(width: int) -> tuple[int, int]:
    """Cap height and descent in px of label text over a panel ``width`` px wide."""
    (_, text_height), baseline = cv2.getTextSize("Ag", _FONT, _font_scale(width), 1)
    return text_height, baseline


def label_height(width: int) -> int:
    """Height in px of the label strip above a panel ``width`` px wide."""
    return sum(_text_size(width)) + 2 * _TEXT_PAD


def labelled_row(panels: Sequence[np.ndarray], labels: Sequence[str]) -> np.ndarray:
    """The panels (each H x W x 3 uint8, one size) left to right, ``PANEL_GAP`` px apart, each under its label.

    Returns (label_height(W) + H) x (n * W + (n - 1) * PANEL_GAP) x 3 uint8; panel i's pixels are rows
    ``label_height(W):``, columns ``i * (W + PANEL_GAP)`` onwards, unchanged.
    """
    if not panels or len(panels) != len(labels):
        raise ValueError(f"{len(panels)} panels for {len(labels)} labels")
    height, width = panels[0].shape[:2]
    if any(p.shape != (height, width, 3) for p in panels):
        raise ValueError(f"panels must all be {height} x {width} x 3, got {[p.shape for p in panels]}")
    top = label_height(width)
    row = np.full((top + height, len(panels) * (width + PANEL_GAP) - PANEL_GAP, 3), BACKGROUND, np.uint8)
    scale, baseline_y = _font_scale(width), _TEXT_PAD + _text_size(width)[0]
    for index, (panel, label) in enumerate(zip(panels, labels, strict=True)):
        left = index * (width + PANEL_GAP)
        row[top:, left : left + width] = panel
        strip = np.ascontiguousarray(row[:top, left : left + width])  # putText clips at the strip's edge
        cv2.putText(strip, label, (_TEXT_PAD, baseline_y), _FONT, scale, (0, 0, 0), 1, cv2.LINE_AA)
        row[:top, left : left + width] = strip
    return row


def write_png(path: Path, image: np.ndarray) -> Path:
    """Writes an RGB uint8 image as PNG (most compression: pictures are committed with benchmark runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"cannot write {path}")
    return path
