"""What a project's label config asks of the backend: which image, which mask control, which prompts.

Parsed with the SDK's ``LabelInterface``. Masks go to a ``BrushLabels`` control when the config
has one (masks are native there), else to a ``PolygonLabels`` control; ``KeyPointLabels`` and
``RectangleLabels`` on the same image are the interactive prompt tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from label_studio_sdk.label_interface import LabelInterface

BRUSH = "brushlabels"
POLYGON = "polygonlabels"
KEYPOINT = "keypointlabels"
RECTANGLE = "rectanglelabels"
_MASK_TAGS = {"BrushLabels": BRUSH, "PolygonLabels": POLYGON}
_PROMPT_TAGS = {"KeyPointLabels": KEYPOINT, "RectangleLabels": RECTANGLE}


class LabelConfigError(ValueError):
    """The label config cannot be served by this backend; the message says what is missing."""


@dataclass(frozen=True)
class Control:
    """One control tag: ``name`` is the region's ``from_name``; ``kind`` is the result type."""

    name: str
    kind: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class LabelSetup:
    """The parts of a label config the backend uses."""

    image_name: str  # the Image tag's name: regions' to_name
    image_key: str  # the task data key holding the image URL (value="$image" -> "image")
    output: Control  # where predicted masks go (brush preferred over polygon)
    prompts: tuple[Control, ...]  # keypoint/rectangle controls on the same image

    @property
    def labels(self) -> tuple[str, ...]:
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
    mask_controls = [c for c in interface.controls if c.tag in _MASK_TAGS]
    if not mask_controls:
        found = sorted({c.tag for c in interface.controls}) or ["no controls"]
        raise LabelConfigError(
            "the label config needs a <BrushLabels> or <PolygonLabels> control for masks; "
            f"it has {', '.join(found)}"
        )
    mask_controls.sort(key=lambda c: 0 if c.tag == "BrushLabels" else 1)
    chosen = next((c for c in mask_controls if _target(c) in images), None)
    if chosen is None:
        raise LabelConfigError(
            f"control {mask_controls[0].name!r} points to {mask_controls[0].to_name}, "
            f"which is not an <Image> of this config (images: {sorted(images)})"
        )
    image_name = _target(chosen)
    labels = tuple(chosen.labels)
    if not labels:
        raise LabelConfigError(f"control {chosen.name!r} has no <Label> values")
    value = str(images[image_name].value or "")
    if not value.startswith("$") or len(value) < 2:
        raise LabelConfigError(f"<Image name={image_name!r}> has value={value!r}; expected a task field like $image")
    prompts = tuple(
        Control(c.name, _PROMPT_TAGS[c.tag], tuple(c.labels))
        for c in interface.controls
        if c.tag in _PROMPT_TAGS and _target(c) == image_name
    )
    return LabelSetup(image_name, value[1:], Control(chosen.name, _MASK_TAGS[chosen.tag], labels), prompts)


def _target(control) -> str | None:
    to_names = control.to_name or []
    return to_names[0] if to_names else None
