"""Interactive prompts: Label Studio's ``params.context.result`` -> points, point labels, box, label.

Context regions are ``keypointlabels`` (value.x/y) and ``rectanglelabels`` (value.x/y/width/height),
in percent of the displayed image; ``is_positive`` may be missing, which means positive.
Coordinates must be finite numbers near 0..100 (a click on the image's edge may stray a little past
it, and is clamped); anything else, or more keypoints than the caller allows, is a PromptError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from training.labelstudio.label_config import KEYPOINT, RECTANGLE

_POINT_TYPES = {KEYPOINT, "keypoint"}
_BOX_TYPES = {RECTANGLE, "rectangle"}
# Percent values within this margin outside 0..100 are clamped onto the image; further out is an error.
EDGE_MARGIN_PCT = 5.0
DEFAULT_MAX_POINTS = 100


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


def _number(value: dict, key: str, where: str, low: float = 0.0) -> float:
    """value[key] as a float in low..100 (percent); ints too large for a float are refused, not crashed on."""
    raw = value.get(key)
    number = math.nan
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        try:
            number = float(raw)
        except OverflowError:  # an int past 1.8e308
            number = math.nan
    if not math.isfinite(number):
        raise PromptError(f"{where}: value.{key} must be a number (percent of the image), got {_shown(raw)}")
    if not low - EDGE_MARGIN_PCT <= number <= 100.0 + EDGE_MARGIN_PCT:
        raise PromptError(f"{where}: value.{key} = {number:g} is outside the image ({low:g}..100 percent)")
    return min(max(number, low), 100.0)


def _shown(raw: object) -> str:
    text = repr(raw)
    return text if len(text) <= 60 else text[:50] + f"… ({len(text)} characters)"


def _is_positive(region: dict, where: str) -> bool:
    """``is_positive``: true, false, or missing/null (positive). A string such as "false" is refused:
    read as truthy it silently turned a negative click positive."""
    flag = region.get("is_positive")
    if flag is None:
        return True
    if not isinstance(flag, bool):
        raise PromptError(f"{where}: is_positive must be true or false, got {_shown(flag)}")
    return flag


def _chosen_label(value: dict, kind: str) -> str | None:
    labels = value.get(kind) or value.get("labels")
    if isinstance(labels, list) and labels and isinstance(labels[0], str):
        return labels[0]
    return None


def parse_context(context: dict[str, Any] | None, max_points: int = DEFAULT_MAX_POINTS) -> Prompt | None:
    """The prompt in a /predict context, or None when there is no usable interactive context.

    Every keypoint becomes a point (negative when ``is_positive`` is false); the last rectangle is
    the box. The label is the one on the last prompt region that carries one. More than
    ``max_points`` keypoints is a PromptError: the decoder's cost grows with their square.
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
            if len(points) == max_points:
                raise PromptError(f"params.context.result has more than {max_points} keypoints "
                                  "(MAX_PROMPT_POINTS); send fewer clicks")
            positive = _is_positive(region, where)
            points.append((x, y))
            point_labels.append(1 if positive else 0)
        else:
            # A width may be negative (a box drawn leftwards): its far edge may then lie below 0.
            w, h = _number(value, "width", where, low=-100.0), _number(value, "height", where, low=-100.0)
            x1, y1 = min(max(x + w, 0.0), 100.0), min(max(y + h, 0.0), 100.0)
            box = (min(x, x1), min(y, y1), max(x, x1), max(y, y1))
        label = _chosen_label(value, kind if kind.endswith("labels") else f"{kind}labels") or label
    if not points and box is None:
        return None
    return Prompt(points, point_labels, box, label)
