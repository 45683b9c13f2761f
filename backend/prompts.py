"""Interactive prompts: Label Studio's ``params.context.result`` -> points, point labels, box, label.

Context regions are ``keypointlabels`` (value.x/y) and ``rectanglelabels`` (value.x/y/width/height),
in percent of the displayed image; ``is_positive`` may be missing, which means positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from training.labelstudio.label_config import KEYPOINT, RECTANGLE

_POINT_TYPES = {KEYPOINT, "keypoint"}
_BOX_TYPES = {RECTANGLE, "rectangle"}


class PromptError(ValueError):
    """A context region cannot be used as a prompt; the message names it."""


@dataclass
class Prompt:
    """Prompts in percent of the image (converted to pixels once the image size is known)."""

    points_pct: list[tuple[float, float]]
    point_labels: list[int]  # 1 positive, 0 negative
    box_pct: tuple[float, float, float, float] | None  # x0, y0, x1, y1
    label: str | None  # the label the user chose on the prompt tool

    def points_px(self, width: int, height: int) -> np.ndarray | None:
        if not self.points_pct:
            return None
        return np.array([[x * width / 100.0, y * height / 100.0] for x, y in self.points_pct], dtype=np.float32)

    def labels_array(self) -> np.ndarray | None:
        return np.array(self.point_labels, dtype=np.int64) if self.point_labels else None

    def box_px(self, width: int, height: int) -> np.ndarray | None:
        if self.box_pct is None:
            return None
        x0, y0, x1, y1 = self.box_pct
        return np.array([x0 * width / 100.0, y0 * height / 100.0, x1 * width / 100.0, y1 * height / 100.0],
                        dtype=np.float32)


def _number(value: dict, key: str, where: str) -> float:
    raw = value.get(key)
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not np.isfinite(raw):
        raise PromptError(f"{where}: value.{key} must be a number (percent of the image), got {raw!r}")
    return float(raw)


def _chosen_label(value: dict, kind: str) -> str | None:
    labels = value.get(kind) or value.get("labels")
    if isinstance(labels, list) and labels and isinstance(labels[0], str):
        return labels[0]
    return None


def parse_context(context: dict[str, Any] | None) -> Prompt | None:
    """The prompt in a /predict context, or None when there is no usable interactive context.

    Every keypoint becomes a point (negative when ``is_positive`` is false); the last rectangle is
    the box. The label is the one on the last prompt region that carries one.
    """
    if not context:
        return None
    results = context.get("result")
    if results is None:
        return None
    if not isinstance(results, list):
        raise PromptError(f"params.context.result must be a list of regions, got {type(results).__name__}")
    points: list[tuple[float, float]] = []
    point_labels: list[int] = []
    box = None
    label = None
    for index, region in enumerate(results):
        where = f"params.context.result[{index}]"
        if not isinstance(region, dict):
            raise PromptError(f"{where} must be an object, got {type(region).__name__}")
        kind = region.get("type")
        value = region.get("value")
        if kind not in _POINT_TYPES | _BOX_TYPES:
            continue  # other regions (e.g. earlier brush strokes) are not prompts
        if not isinstance(value, dict):
            raise PromptError(f"{where}: value must be an object, got {value!r}")
        x, y = _number(value, "x", where), _number(value, "y", where)
        if kind in _POINT_TYPES:
            points.append((x, y))
            point_labels.append(0 if region.get("is_positive") is False else 1)
        else:
            w, h = _number(value, "width", where), _number(value, "height", where)
            box = (min(x, x + w), min(y, y + h), max(x, x + w), max(y, y + h))
        label = _chosen_label(value, kind if kind.endswith("labels") else f"{kind}labels") or label
    if not points and box is None:
        return None
    return Prompt(points, point_labels, box, label)
