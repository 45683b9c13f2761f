"""The one reading of a project's label config, for serving and for training alike.

The rule:

- Classes are the labels of the output control, in their config order. The output control is the
  first ``BrushLabels`` whose ``toName`` is an ``<Image>`` (masks are native there), else the
  first such ``PolygonLabels``; the image it points to is the chosen image. The backend emits
  masks into that control and the adapter learns exactly these classes.
- Training takes masks from every mask control on the chosen image (``BrushLabels``,
  ``PolygonLabels`` and ``RectangleLabels`` not marked ``smart``/``smartOnly``), but only for
  labels that are among the classes; labels of other controls and other images are ignored.
- ``KeyPointLabels`` and ``RectangleLabels`` on the chosen image are the interactive prompt tools.

Parsed with the SDK's ``LabelInterface``; results are cached per config text.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from label_studio_sdk.label_interface import LabelInterface

__all__ = [
    "BRUSH",
    "KEYPOINT",
    "POLYGON",
    "RECTANGLE",
    "Control",
    "LabelConfigError",
    "LabelSetup",
    "parse_label_config",
]

# Result types, as regions spell them in ``type`` and as the key of their label list in ``value``.
BRUSH = "brushlabels"
POLYGON = "polygonlabels"
KEYPOINT = "keypointlabels"
RECTANGLE = "rectanglelabels"
_OUTPUT_TAGS = {"BrushLabels": BRUSH, "PolygonLabels": POLYGON}
_PROMPT_TAGS = {"KeyPointLabels": KEYPOINT, "RectangleLabels": RECTANGLE}


class LabelConfigError(ValueError):
    """The label config cannot be served or trained on; the message says what is missing."""


@dataclass(frozen=True)
class Control:
    """One control tag: ``name`` is the region's ``from_name``; ``kind`` is the result type."""

    name: str
    kind: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class LabelSetup:
    """The parts of a label config samloop uses."""

    image_name: str  # the Image tag's name: regions' to_name
    image_key: str  # the task data key holding the image URL (value="$image" -> "image")
    output: Control  # where predicted masks go (brush preferred over polygon); its labels are the classes
    prompts: tuple[Control, ...]  # keypoint/rectangle controls on the same image
    mask_sources: tuple[Control, ...]  # controls whose regions are training masks (the output among them)

    @property
    def labels(self) -> tuple[str, ...]:
        """The classes, in config order."""
        return self.output.labels

    def output_label_for(self, prompt_label: str | None) -> str | None:
        """The output control's label with the same name as a prompt label, else its first label."""
        if prompt_label in self.output.labels:
            return prompt_label
        return self.output.labels[0] if self.output.labels else None


def parse_label_config(config: str) -> LabelSetup:
    """Parse a label config; raises LabelConfigError naming what is wrong or missing."""
    if not isinstance(config, str) or not config.strip():
        raise LabelConfigError("the label config is empty")
    return _parse_cached(config)


@lru_cache(maxsize=64)
def _parse_cached(config: str) -> LabelSetup:
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the SDK raises several XML and schema error types
        raise LabelConfigError(f"the label config is not valid XML or not a Label Studio config: {exc}") from exc
    images = {obj.name: obj for obj in interface.objects if obj.tag == "Image"}
    if not images:
        raise LabelConfigError("the label config has no <Image> object to segment")
    output = _output_control(interface.controls, images)
    image_name = _target(output)
    labels = tuple(output.labels)
    if not labels:
        raise LabelConfigError(f"control {output.name!r} has no <Label> values")
    value = str(images[image_name].value or "")
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(f"<Image name={image_name!r}> has value={value!r}; expected a task field like $image")
    prompts = tuple(
        Control(c.name, _PROMPT_TAGS[c.tag], tuple(c.labels))
        for c in interface.controls
        if c.tag in _PROMPT_TAGS and _target(c) == image_name
    )
    sources = tuple(
        Control(c.name, RECTANGLE if c.tag == "RectangleLabels" else _OUTPUT_TAGS[c.tag], tuple(c.labels))
        for c in interface.controls
        if _is_mask_source(c) and image_name in (c.to_name or [])
    )
    return LabelSetup(image_name, value[1:], Control(output.name, _OUTPUT_TAGS[output.tag], labels), prompts,
                      sources)


def _output_control(controls: list, images: dict[str, Any]) -> Any:
    """The first BrushLabels pointing at an Image, else the first such PolygonLabels."""
    candidates = [c for c in controls if c.tag in _OUTPUT_TAGS]
    if not candidates:
        found = sorted({c.tag for c in controls})
        raise LabelConfigError(
            "the label config needs a <BrushLabels> or <PolygonLabels> control for masks; it has no BrushLabels "
            f"or PolygonLabels (controls: {', '.join(found) or 'none'})"
        )
    candidates.sort(key=lambda c: 0 if c.tag == "BrushLabels" else 1)  # stable: config order within a tag
    chosen = next((c for c in candidates if _target(c) in images), None)
    if chosen is None:
        raise LabelConfigError(
            f"control {candidates[0].name!r} points to {candidates[0].to_name}, "
            f"which is not an <Image> of this config (images: {sorted(images)})"
        )
    return chosen


def _is_mask_source(control: Any) -> bool:
    if control.tag in _OUTPUT_TAGS:
        return True
    # A smart RectangleLabels is a prompt tool for the model, not an annotation.
    return control.tag == "RectangleLabels" and not (_is_true(control.attr.get("smart"))
                                                     or _is_true(control.attr.get("smartOnly")))


def _is_true(value: Any) -> bool:
    return str(value).strip().lower() in {"true", "1", "yes"}


def _target(control: Any) -> str | None:
    to_names = control.to_name or []
    return to_names[0] if to_names else None
