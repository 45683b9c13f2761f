"""Label Studio export -> SegmentationDataset: labeled tasks, their images, per-class masks.

The export goes through label-studio-sdk's ``LabelStudio`` client (legacy tokens and personal
access tokens alike) using the project's synchronous JSON export
(``GET /api/projects/{id}/export``), which carries every annotation of every labeled task.
Per task the latest non-cancelled annotation is used; annotations marked ground truth win.

Coordinates: brush RLE is a full-resolution alpha plane of ``original_height x original_width``;
polygon points and rectangles are percent of the image width/height, rectangles rotating
clockwise (degrees) about their top-left corner. Masks come out at the resolution of the image
as displayed (EXIF orientation applied, which is what Label Studio draws on).

A task whose image cannot be fetched or whose annotation cannot be decoded is skipped and
reported; Label Studio being unreachable or answering 401/5xx is retried, then raised as
``LabelStudioError`` naming the URL and the status.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import cv2
import httpx
import numpy as np
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk._extensions.label_studio_tools.core.utils import io as ls_io
from label_studio_sdk.converter.brush import decode_rle
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.label_interface import LabelInterface
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry as UrllibRetry

from training.data.dataset import SegmentationDataset, from_items
from training.data.images import ImageError, load_image

__all__ = [
    "ExportError",
    "ExportResult",
    "LabelStudioError",
    "LabelStudioSource",
    "MaskSchema",
    "annotation_masks",
    "export_dataset",
    "mask_schema",
    "pick_annotation",
    "project_id_of",
]

log = logging.getLogger(__name__)

# Controls whose regions are ground-truth masks. RectangleLabels/KeyPointLabels marked smart are
# prompts for the model (interactive pre-annotation), not annotations.
MASK_CONTROLS = {"BrushLabels": "brushlabels", "PolygonLabels": "polygonlabels", "RectangleLabels": "rectanglelabels"}
RETRY_STATUSES = frozenset({401, 408, 409, 429, 500, 502, 503, 504})
T = TypeVar("T")


class LabelStudioError(RuntimeError):
    """Label Studio could not be reached or refused us, after retries."""

    def __init__(self, message: str, url: str, status: int | None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class ExportError(ValueError):
    """The project cannot be exported for training (e.g. its label config has no mask control)."""


@dataclass(frozen=True)
class LabelStudioSource:
    """Where Label Studio is and how to talk to it.

    ``retries`` extra attempts per API call with ``backoff * 2**attempt`` seconds between them.
    """

    url: str
    api_key: str
    timeout: float = 60.0
    retries: int = 3
    backoff: float = 1.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"Label Studio URL must start with http:// or https://, got {self.url!r}")
        if not self.api_key:
            raise ValueError("a Label Studio API key (legacy token or personal access token) is required")
        if self.retries < 0 or self.backoff < 0 or self.timeout <= 0:
            raise ValueError(f"bad retry settings: retries={self.retries}, backoff={self.backoff}, "
                             f"timeout={self.timeout}")

    @property
    def base_url(self) -> str:
        # A trailing slash keeps a path prefix (https://host/ls/) when the SDK urljoins the token refresh.
        return self.url.rstrip("/") + "/"


@dataclass(frozen=True)
class MaskSchema:
    """What in a label config becomes masks: one image object and its mask controls."""

    image_name: str  # the <Image name=...> regions must point to
    image_key: str  # task["data"] key holding the image URL
    controls: dict[str, str]  # control name -> result type ("brushlabels", ...)
    class_names: list[str]  # ordered union of the controls' labels


@dataclass
class ExportResult:
    """The dataset plus what was left out and why.

    ``skipped``: [{"task": id, "reason": str}] for tasks that had a usable annotation but could not
    be used; ``task_ids``: tasks in the dataset (sample names are ``task-<id>``);
    ``annotations``: {task id: annotation id used}.
    """

    dataset: SegmentationDataset
    skipped: list[dict[str, Any]] = field(default_factory=list)
    task_ids: list[int] = field(default_factory=list)
    annotations: dict[int, int | None] = field(default_factory=dict)
    cancelled_only: int = 0

    def summary(self) -> dict[str, Any]:
        """JSON-safe description for job results and version metadata."""
        return {
            "tasks": len(self.task_ids),
            "task_ids": list(self.task_ids),
            "skipped": list(self.skipped),
            "cancelled_only": self.cancelled_only,
            "class_names": list(self.dataset.class_names),
        }


class _TaskSkipped(Exception):
    """This task cannot be used; the message is the reason reported to the user."""


# ----- project ids and label config ------------------------------------------------------------


def project_id_of(project: str | int) -> int:
    """Label Studio's numeric project id from ``"<id>.<created_ts>"`` (as /setup sends) or ``"<id>"``."""
    text = str(project).strip()
    head = text.split(".", 1)[0]
    if not head.isdigit():
        raise ValueError(f"project must look like '<id>' or '<id>.<timestamp>', got {project!r}")
    return int(head)


def _is_true(value: Any) -> bool:
    return str(value).strip().lower() in {"true", "1", "yes"}


def mask_schema(label_config: str) -> MaskSchema:
    """Find the image object and its mask controls in a label config.

    Raises:
        ExportError: no BrushLabels/PolygonLabels/(non-smart) RectangleLabels pointing at an Image.
    """
    try:
        interface = LabelInterface(label_config)
    except Exception as exc:  # the SDK raises several types for malformed XML
        raise ExportError(f"cannot parse the project's label config: {exc}") from exc
    images = {obj.name: obj for obj in interface.objects if obj.tag == "Image"}
    by_image: dict[str, dict[str, str]] = {}
    labels_by_image: dict[str, list[str]] = {}
    for control in interface.controls:
        result_type = MASK_CONTROLS.get(control.tag)
        if result_type is None:
            continue
        if control.tag == "RectangleLabels" and (_is_true(control.attr.get("smart"))
                                                 or _is_true(control.attr.get("smartOnly"))):
            continue
        for target in control.to_name or []:
            if target not in images:
                continue
            by_image.setdefault(target, {})[control.name] = result_type
            names = labels_by_image.setdefault(target, [])
            names.extend(label for label in control.labels if label not in names)
    chosen = next((name for name in images if by_image.get(name) and labels_by_image.get(name)), None)
    if chosen is None:
        raise ExportError(
            "the label config has no BrushLabels, PolygonLabels or (non-smart) RectangleLabels with labels "
            f"pointing at an Image; found controls {[c.tag for c in interface.controls]}"
        )
    value = str(images[chosen].value or "")
    if not value.startswith("$") or len(value) < 2:
        raise ExportError(f"<Image name={chosen!r}> has value {value!r}; expected a task field like '$image'")
    return MaskSchema(chosen, value[1:], by_image[chosen], labels_by_image[chosen])


# ----- annotation choice -----------------------------------------------------------------------


def _timestamp(annotation: dict) -> float:
    for key in ("updated_at", "created_at"):
        value = annotation.get(key)
        if isinstance(value, str) and value:
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return float("-inf")


def pick_annotation(task: dict) -> dict | None:
    """The annotation to train on: latest non-cancelled, preferring ones marked ground truth."""
    usable = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    ground_truth = [a for a in usable if a.get("ground_truth")]
    pool = ground_truth or usable
    if not pool:
        return None
    return max(pool, key=lambda a: (_timestamp(a), a.get("id") or 0))


# ----- regions -> masks ------------------------------------------------------------------------


def _percent_points(points: Iterable[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Percent (x, y) -> pixel coordinates where pixel (i, j) spans [j, j+1) x [i, i+1)."""
    array = np.asarray(list(points), dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2 or not np.isfinite(array).all():
        raise _TaskSkipped(f"polygon points are not a list of finite [x, y] pairs: {str(points)[:80]}")
    return np.stack([array[:, 0] * width / 100.0, array[:, 1] * height / 100.0], axis=1)


def _fill(polygon_px: np.ndarray, height: int, width: int) -> np.ndarray:
    """Even-odd scanline fill: a pixel is inside when its centre (j + 0.5, i + 0.5) is.

    cv2.fillPoly also paints the outline's pixels, which grows every shape by about a pixel.
    """
    mask = np.zeros((height, width), dtype=bool)
    x0, y0 = polygon_px[:, 0], polygon_px[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    centres = np.arange(height, dtype=np.float64)[:, None] + 0.5
    # Half-open in y so a scanline through a vertex counts its two edges once.
    crosses = (np.minimum(y0, y1) <= centres) & (centres < np.maximum(y0, y1))
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = np.where(crosses, x0 + (centres - y0) * (x1 - x0) / (y1 - y0), np.nan)
    xs.sort(axis=1)  # NaNs sort last
    for row in np.nonzero(crosses.any(axis=1))[0]:
        hits = xs[row][: int(crosses[row].sum())]
        for left, right in zip(hits[0::2], hits[1::2], strict=False):
            start = max(0, int(np.ceil(left - 0.5)))
            stop = min(width, int(np.ceil(right - 0.5)))
            if stop > start:
                mask[row, start:stop] = True
    return mask


def _polygon_mask(value: dict, height: int, width: int) -> np.ndarray | None:
    points = value.get("points")
    if not isinstance(points, list):
        raise _TaskSkipped(f"polygon has no points list: {str(value)[:80]}")
    if len(points) < 3:
        return None  # an unfinished polygon covers nothing
    return _fill(_percent_points(points, height, width), height, width)


def _rectangle_mask(value: dict, height: int, width: int) -> np.ndarray:
    try:
        x, y, w, h = (float(value[k]) for k in ("x", "y", "width", "height"))
        rotation = math.radians(float(value.get("rotation") or 0.0))
    except (KeyError, TypeError, ValueError) as exc:
        raise _TaskSkipped(f"rectangle has a missing or non-numeric field ({exc}): {str(value)[:80]}") from exc
    if not all(math.isfinite(v) for v in (x, y, w, h, rotation)):
        raise _TaskSkipped(f"rectangle has non-finite coordinates: {str(value)[:80]}")
    origin = np.array([x * width / 100.0, y * height / 100.0])
    # Label Studio rotates clockwise on screen (y down) about the top-left corner.
    cos, sin = math.cos(rotation), math.sin(rotation)
    along_w = np.array([cos, sin]) * (w * width / 100.0)
    along_h = np.array([-sin, cos]) * (h * height / 100.0)
    corners = np.stack([origin, origin + along_w, origin + along_w + along_h, origin + along_h])
    return _fill(corners, height, width)


def _rle_length(rle: list[int]) -> int:
    """The value count in an RLE header (first 32 bits), read before decoding a possibly bad stream."""
    header = bytes(rle[:4])
    return int.from_bytes(header, "big") if len(header) == 4 else -1


def _brush_mask(region: dict, height: int, width: int) -> np.ndarray:
    value = region.get("value") or {}
    rle = value.get("rle")
    if value.get("format", "rle") != "rle" or not isinstance(rle, list) or not rle:
        raise _TaskSkipped(f"brush region {region.get('id')!r} has no RLE data")
    if not all(isinstance(v, int) and 0 <= v <= 255 for v in rle):
        raise _TaskSkipped(f"brush region {region.get('id')!r} RLE is not a list of bytes")
    try:
        rle_h, rle_w = int(region["original_height"]), int(region["original_width"])
    except (KeyError, TypeError, ValueError):
        rle_h, rle_w = height, width
    expected = rle_h * rle_w * 4
    # A corrupt header could ask for gigabytes; check it against the image size first.
    if _rle_length(rle) != expected:
        raise _TaskSkipped(
            f"brush region {region.get('id')!r} RLE holds {_rle_length(rle)} values, "
            f"expected {expected} for {rle_w}x{rle_h} (W x H)"
        )
    try:
        flat = decode_rle(rle)
    except (ValueError, IndexError) as exc:
        raise _TaskSkipped(f"brush region {region.get('id')!r} RLE cannot be decoded: {exc}") from exc
    if flat.size != expected:
        raise _TaskSkipped(f"brush region {region.get('id')!r} decoded to {flat.size} values, expected {expected}")
    alpha = flat.reshape(rle_h, rle_w, 4)[:, :, 3] > 127
    if (rle_h, rle_w) == (height, width):
        return alpha
    if abs(rle_w / rle_h - width / height) > 0.02 * (width / height):
        raise _TaskSkipped(f"brush mask is {rle_w}x{rle_h} (W x H) but the image is {width}x{height}")
    # Same shape, other resolution (the image was replaced by a resized copy): rescale the mask.
    return cv2.resize(alpha.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)


def annotation_masks(result: list, schema: MaskSchema, height: int, width: int) -> dict[str, np.ndarray]:
    """Per-class H x W bool masks from an annotation's ``result`` list.

    Regions of other controls or images, and labels the config no longer has, are ignored.

    Raises:
        _TaskSkipped: a region of a mask control cannot be decoded.
    """
    if not isinstance(result, list):
        raise _TaskSkipped(f"annotation result is {type(result).__name__}, not a list")
    known = set(schema.class_names)
    masks: dict[str, np.ndarray] = {}
    for region in result:
        if not isinstance(region, dict):
            raise _TaskSkipped(f"annotation region is {type(region).__name__}, not an object")
        result_type = schema.controls.get(region.get("from_name", ""))
        if result_type is None or region.get("to_name", schema.image_name) != schema.image_name:
            continue
        value = region.get("value")
        if not isinstance(value, dict):
            raise _TaskSkipped(f"region {region.get('id')!r} has no value object")
        labels = [label for label in value.get(result_type) or [] if label in known]
        if not labels:
            continue
        if result_type == "brushlabels":
            mask = _brush_mask(region, height, width)
        elif result_type == "polygonlabels":
            mask = _polygon_mask(value, height, width)
        else:
            mask = _rectangle_mask(value, height, width)
        if mask is None:
            continue
        for label in labels:
            masks[label] = masks[label] | mask if label in masks else mask
    return masks


# ----- HTTP -------------------------------------------------------------------------------------


def _retrying(source: LabelStudioSource, what: str, url: str, call: Callable[[], T],
              sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``call`` with retries on 401/408/409/429/5xx and connection errors, then a clear error."""
    last_status: int | None = None
    last_detail = ""
    for attempt in range(source.retries + 1):
        try:
            return call()
        except ApiError as exc:
            last_status, last_detail = exc.status_code, str(exc.body)[:200]
            if exc.status_code not in RETRY_STATUSES:
                break
        except (httpx.TransportError, requests.ConnectionError) as exc:
            last_status, last_detail = None, f"{type(exc).__name__}: {exc}"
        if attempt < source.retries:
            delay = source.backoff * (2 ** attempt)
            log.warning("Label Studio %s at %s failed (%s); retrying in %.1f s", what, url,
                        last_status or last_detail, delay)
            sleep(delay)
    status_text = f"HTTP {last_status}" if last_status is not None else "no response"
    hint = " (check LABEL_STUDIO_API_KEY)" if last_status in (401, 403) else ""
    raise LabelStudioError(
        f"Label Studio {what} failed at {url}: {status_text}{hint} after {source.retries + 1} attempts; "
        f"last answer: {last_detail}", url, last_status,
    )


def _client(source: LabelStudioSource) -> LabelStudio:
    try:
        # max_retries=0: our own loop retries (401 included) and ends in one clear error.
        return LabelStudio(base_url=source.base_url, api_key=source.api_key, timeout=source.timeout, max_retries=0)
    except ApiError as exc:  # an expired or malformed personal access token is refused up front
        raise LabelStudioError(f"Label Studio API key for {source.url} is not usable: {exc.body}", source.url,
                               exc.status_code) from exc


def _download_token(client: LabelStudio, source: LabelStudioSource) -> str:
    """The token get_local_path should send: for a personal access token, the current access token."""
    tokens = getattr(getattr(client, "_client_wrapper", None), "_tokens_client", None)
    if tokens is None:
        return source.api_key
    return _retrying(source, "token refresh", source.base_url + "api/token/refresh/", lambda: tokens.api_key)


def _fetch_label_config(client: LabelStudio, source: LabelStudioSource, project_id: int) -> str:
    url = f"{source.base_url}api/projects/{project_id}/"
    project = _retrying(source, "project lookup", url, lambda: client.projects.get(id=project_id))
    config = getattr(project, "label_config", None)
    if not config:
        raise ExportError(f"project {project_id} at {url} has no label config")
    return config


def _fetch_labeled_tasks(client: LabelStudio, source: LabelStudioSource, project_id: int) -> list[dict]:
    url = f"{source.base_url}api/projects/{project_id}/export"

    def fetch() -> bytes:
        chunks = client.projects.exports.download_sync(
            project_id, export_type="JSON", download_all_tasks=False, download_resources=False
        )
        return b"".join(chunks)

    body = _retrying(source, "export", url, fetch)
    try:
        tasks = json.loads(body)
    except ValueError as exc:
        raise LabelStudioError(f"Label Studio export at {url} is not JSON: {exc}", url, 200) from exc
    if not isinstance(tasks, list):
        raise LabelStudioError(f"Label Studio export at {url} is not a list of tasks", url, 200)
    return [t for t in tasks if isinstance(t, dict)]


class _TimeoutSession(requests.Session):
    """get_local_path calls requests without a timeout; a stuck server must not hang the job."""

    def __init__(self, timeout: float, retries: int, backoff: float) -> None:
        super().__init__()
        self._timeout = timeout
        retry = UrllibRetry(total=retries, backoff_factor=backoff, status_forcelist=(500, 502, 503, 504),
                            allowed_methods=frozenset({"GET"}), raise_on_status=False)
        adapter = HTTPAdapter(max_retries=retry)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def request(self, method, url, **kwargs):  # type: ignore[override]
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, **kwargs)


def _task_image(task: dict, schema: MaskSchema, source: LabelStudioSource, token: str, cache_dir: Path,
                max_pixels: int) -> np.ndarray:
    url = (task.get("data") or {}).get(schema.image_key)
    if not isinstance(url, str) or not url:
        raise _TaskSkipped(f"task data has no image URL in field {schema.image_key!r}")
    for attempt in range(2):
        try:
            # The SDK sends the token only when the URL's host is Label Studio's own.
            path = ls_io.get_local_path(url, cache_dir=str(cache_dir), hostname=source.url.rstrip("/"),
                                        access_token=token, task_id=task.get("id"), download_resources=True)
        except (requests.RequestException, OSError, ValueError) as exc:
            raise _TaskSkipped(f"image {url} cannot be fetched: {exc}") from exc
        except Exception as exc:  # the SDK raises bare Exception for cloud URLs without a task id
            raise _TaskSkipped(f"image {url} cannot be fetched: {exc}") from exc
        try:
            return load_image(path, max_pixels=max_pixels)
        except ImageError as exc:
            # A download cut short stays in the cache under the same name: drop it and fetch once more.
            if attempt == 0 and Path(path).is_relative_to(cache_dir):
                Path(path).unlink(missing_ok=True)
                continue
            raise _TaskSkipped(f"image {url} cannot be read: {exc}") from exc
    raise AssertionError("unreachable")


def _downscale(image: np.ndarray, masks: dict[str, np.ndarray], max_side: int | None
               ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Bound memory: shrink images whose longest side exceeds ``max_side`` (masks follow)."""
    height, width = image.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return image, masks
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    # Area-average then threshold: a mask pixel survives if it covered most of its new pixel.
    small_masks = {k: cv2.resize(m.astype(np.float32), size, interpolation=cv2.INTER_AREA) >= 0.5
                   for k, m in masks.items()}
    return small, small_masks


class _DropLocalhostAdvice(logging.Filter):
    """get_local_path warns on every image when LABEL_STUDIO_URL is localhost (Docker advice);
    once per process is plenty."""

    seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Using `localhost`"):
            return True
        first, _DropLocalhostAdvice.seen = not _DropLocalhostAdvice.seen, True
        return first


def _quiet_sdk_download_log() -> None:
    sdk_log = logging.getLogger(ls_io.__name__)
    if not any(isinstance(f, _DropLocalhostAdvice) for f in sdk_log.filters):
        sdk_log.addFilter(_DropLocalhostAdvice())


# ----- export ------------------------------------------------------------------------------------


def export_dataset(source: LabelStudioSource, project: str | int, cache_dir: str | Path,
                   max_side: int | None = None, max_pixels: int = 100_000_000) -> ExportResult:
    """Export a project's labeled tasks as a SegmentationDataset.

    Args:
        source: Label Studio URL, API key and retry policy.
        project: ``"<id>"`` or ``"<id>.<timestamp>"``.
        cache_dir: downloaded images are kept here (keyed by URL) for the next run.
        max_side: if set, images (and masks) larger than this are shrunk to it, to bound memory.
        max_pixels: images above this many pixels are skipped rather than decoded.

    Returns:
        ExportResult; samples are named ``task-<id>`` in task order, images H x W x 3 uint8 RGB
        (display orientation), masks C x H x W bool in the label config's class order.

    Raises:
        LabelStudioError: Label Studio unreachable / 401 / 5xx after retries (names URL and status).
        ExportError: the label config has nothing to train masks on.
    """
    project_id = project_id_of(project)
    _quiet_sdk_download_log()
    cache = Path(cache_dir) / f"project-{project_id}"
    cache.mkdir(parents=True, exist_ok=True)
    client = _client(source)
    schema = mask_schema(_fetch_label_config(client, source, project_id))
    tasks = _fetch_labeled_tasks(client, source, project_id)
    token = _download_token(client, source)
    items: list[tuple[str, np.ndarray, dict[str, np.ndarray]]] = []
    result = ExportResult(SegmentationDataset(schema.class_names, []))
    with ls_io.http_session(_TimeoutSession(source.timeout, source.retries, source.backoff)):
        for task in tasks:
            task_id = task.get("id")
            annotation = pick_annotation(task)
            if annotation is None:
                result.cancelled_only += 1
                continue
            try:
                image = _task_image(task, schema, source, token, cache, max_pixels)
                masks = annotation_masks(annotation.get("result"), schema, image.shape[0], image.shape[1])
            except _TaskSkipped as exc:
                log.warning("task %s skipped: %s", task_id, exc)
                result.skipped.append({"task": task_id, "reason": str(exc)})
                continue
            image, masks = _downscale(image, masks, max_side)
            items.append((f"task-{task_id}", image, masks))
            result.task_ids.append(task_id)
            result.annotations[task_id] = annotation.get("id")
    result.dataset = from_items(schema.class_names, items)
    log.info("exported project %s: %d labeled tasks used, %d skipped, %d with only cancelled annotations; "
             "classes %s", project_id, len(items), len(result.skipped), result.cancelled_only, schema.class_names)
    return result
