"""What the Label Studio frontend stores, built for tests: annotation regions, label configs,
PNG uploads, and synthetic scenes with their true masks."""

from __future__ import annotations

import io
import uuid

import numpy as np
from label_studio_sdk.converter.brush import mask2rle
from PIL import Image


def brush_region(mask: np.ndarray, label: str, from_name: str = "tag", to_name: str = "image") -> dict:
    """A BrushLabels region: RLE of the mask's alpha plane at full image resolution."""
    height, width = mask.shape
    return {
        "id": uuid.uuid4().hex[:10], "type": "brushlabels", "from_name": from_name, "to_name": to_name,
        "original_width": width, "original_height": height, "image_rotation": 0, "origin": "manual",
        "value": {"format": "rle", "rle": mask2rle((mask > 0).astype(np.uint8) * 255), "brushlabels": [label]},
    }


def polygon_region(points_px: list[tuple[float, float]], size: tuple[int, int], label: str,
                   from_name: str = "poly", to_name: str = "image") -> dict:
    """A PolygonLabels region from pixel (x, y) vertices on an image of ``size`` = (H, W)."""
    height, width = size
    points = [[x * 100.0 / width, y * 100.0 / height] for x, y in points_px]
    return {
        "id": uuid.uuid4().hex[:10], "type": "polygonlabels", "from_name": from_name, "to_name": to_name,
        "original_width": width, "original_height": height, "image_rotation": 0, "origin": "manual",
        "value": {"points": points, "closed": True, "polygonlabels": [label]},
    }


def rectangle_region(x: float, y: float, w: float, h: float, size: tuple[int, int], label: str,
                     rotation: float = 0.0, from_name: str = "rect", to_name: str = "image") -> dict:
    """A RectangleLabels region from a pixel box (top-left x, y, width, height) on an image of (H, W)."""
    height, width = size
    return {
        "id": uuid.uuid4().hex[:10], "type": "rectanglelabels", "from_name": from_name, "to_name": to_name,
        "original_width": width, "original_height": height, "image_rotation": 0, "origin": "manual",
        "value": {"x": x * 100.0 / width, "y": y * 100.0 / height, "width": w * 100.0 / width,
                  "height": h * 100.0 / height, "rotation": rotation, "rectanglelabels": [label]},
    }


def box_polygon(mask: np.ndarray) -> list[tuple[float, float]]:
    """The pixel-edge corners of a mask's bounding box, clockwise from the top left: polygon vertices."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def png_bytes(image: np.ndarray, exif_orientation: int | None = None) -> bytes:
    pil = Image.fromarray(image)
    buffer = io.BytesIO()
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        pil.save(buffer, format="PNG", exif=exif)
    else:
        pil.save(buffer, format="PNG")
    return buffer.getvalue()


BRUSH_POLYGON_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="disc" background="#ff0000"/>
    <Label value="box" background="#0000ff"/>
  </BrushLabels>
  <PolygonLabels name="poly" toName="image">
    <Label value="disc"/>
    <Label value="box"/>
  </PolygonLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="disc"/><Label value="box"/></KeyPointLabels>
  <RectangleLabels name="rect" toName="image" smart="true"><Label value="disc"/><Label value="box"/></RectangleLabels>
</View>"""


# Brush a, b; polygon b, c (overlapping and disjoint); plain rectangle a, d; smart rectangle and keypoint e.
# The classes are the brush's a, b; every mask control gives training masks, for a and b only.
SEVERAL_CONTROLS_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <PolygonLabels name="poly" toName="image"><Label value="b"/><Label value="c"/></PolygonLabels>
  <BrushLabels name="tag" toName="image"><Label value="a"/><Label value="b"/></BrushLabels>
  <RectangleLabels name="rect" toName="image"><Label value="a"/><Label value="d"/></RectangleLabels>
  <RectangleLabels name="smart_rect" toName="image" smart="true"><Label value="e"/></RectangleLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="e"/></KeyPointLabels>
</View>"""


def synthetic_scene(seed: int, size: tuple[int, int] = (96, 128)) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """An image with a bright disc and a dark box on textured ground, and their true masks."""
    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    image = rng.integers(90, 150, size=(height, width, 3)).astype(np.uint8)
    radius = int(rng.integers(min(size) // 8, min(size) // 4))
    cy, cx = int(rng.integers(radius, height - radius)), int(rng.integers(radius, width // 2))
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    bh, bw = int(rng.integers(height // 6, height // 3)), int(rng.integers(width // 8, width // 4))
    by, bx = int(rng.integers(0, height - bh)), int(rng.integers(width // 2, width - bw))
    box = np.zeros((height, width), dtype=bool)
    box[by:by + bh, bx:bx + bw] = True
    image[disc] = (230, 60, 50)
    image[box] = (30, 40, 160)
    return image, {"disc": disc, "box": box & ~disc}
