"""Small Label Studio REST helpers for the end-to-end tests, each checked against LS 1.23.2.

All functions take an ``httpx.Client`` whose ``base_url`` is the LS URL and whose headers carry auth
(``LabelStudioServer.client()``), and raise ``httpx.HTTPStatusError`` on a non-2xx answer.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import httpx
import numpy as np
from label_studio_sdk.converter.brush import mask2rle
from PIL import Image

T = TypeVar("T")
Json = dict[str, Any]


def _json(resp: httpx.Response) -> Any:
    if resp.is_error:
        raise httpx.HTTPStatusError(
            f"{resp.request.method} {resp.request.url} -> {resp.status_code}: {resp.text[:1000]}",
            request=resp.request,
            response=resp,
        )
    return resp.json() if resp.content else None


# ---------------------------------------------------------------- label configs and images


def _labels(classes: Sequence[str]) -> str:
    return "".join(f'<Label value="{c}"/>' for c in classes)


def _smart_keypoints(labels: str, keypoint_name: str, image_name: str) -> str:
    return f'<KeyPointLabels name="{keypoint_name}" toName="{image_name}" smart="true">{labels}</KeyPointLabels>'


def brush_config(
    classes: Sequence[str] = ("cat", "dog"),
    *,
    smart: bool = True,
    image_name: str = "image",
    brush_name: str = "tag",
    keypoint_name: str = "smart",
) -> str:
    """A BrushLabels config; with ``smart`` also a smart KeyPointLabels tool for interactive clicks."""
    labels = _labels(classes)
    keypoints = _smart_keypoints(labels, keypoint_name, image_name) if smart else ""
    return (
        f'<View><Image name="{image_name}" value="$image" zoom="true"/>'
        f'<BrushLabels name="{brush_name}" toName="{image_name}">{labels}</BrushLabels>'
        f"{keypoints}</View>"
    )


def polygon_config(
    classes: Sequence[str] = ("cat", "dog"), *, image_name: str = "image", smart: bool = False,
    keypoint_name: str = "smart",
) -> str:
    """A PolygonLabels config named ``poly`` on ``image_name``; with ``smart`` also a smart KeyPointLabels tool."""
    labels = _labels(classes)
    keypoints = _smart_keypoints(labels, keypoint_name, image_name) if smart else ""
    return (
        f'<View><Image name="{image_name}" value="$image"/>'
        f'<PolygonLabels name="poly" toName="{image_name}">{labels}</PolygonLabels>{keypoints}</View>'
    )


def synthetic_image(width: int = 96, height: int = 64, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """A PNG with one bright rectangle on a noisy background, and that rectangle's mask.

    Returns ``(png_bytes, mask)``; ``mask`` is ``uint8`` of shape ``(height, width)``, 255 inside.
    """
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 80, size=(height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), dtype=np.uint8)
    x0, y0 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
    mask[y0 : y0 + height // 3, x0 : x0 + width // 3] = 255
    pixels[mask > 0] = (220, 180, 40)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue(), mask


# ---------------------------------------------------------------- projects, tasks, annotations


def create_project(client: httpx.Client, label_config: str, title: str = "samloop e2e", **fields: Any) -> Json:
    """``POST /api/projects``; extra ``fields`` go into the body (e.g. ``min_annotations_to_start_training``)."""
    return _json(client.post("/api/projects", json={"title": title, "label_config": label_config, **fields}))


def update_project(client: httpx.Client, project_id: int, **fields: Any) -> Json:
    return _json(client.patch(f"/api/projects/{project_id}", json=fields))


def import_images(client: httpx.Client, project_id: int, images: Iterable[tuple[str, bytes]]) -> Json:
    """Upload several images in one multipart request; each becomes a task.

    LS keeps only one file per multipart field name, so each file gets its own field. The tasks' data then
    hold ``{"image": "/data/upload/<project>/<prefix>-<name>"}``. Returns LS's import summary.
    """
    files = [(f"file{i}", (name, data, "image/png")) for i, (name, data) in enumerate(images)]
    return _json(client.post(f"/api/projects/{project_id}/import", files=files))


def png_bytes(image: np.ndarray) -> bytes:
    """``image`` (``(H, W, 3)`` uint8 RGB) as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def import_named_images(client: httpx.Client, project_id: int, images: Sequence[tuple[str, np.ndarray]]) -> list[Json]:
    """Upload ``(name, RGB array)`` pairs as PNGs (``<name>.png``); returns their tasks in the same order.

    Tasks are matched to images by the uploaded file name (LS prefixes it with a random ``<hex>-``).
    """
    summary = import_images(client, project_id, [(f"{name}.png", png_bytes(image)) for name, image in images])
    if summary["task_count"] != len(images):
        raise ValueError(f"imported {summary['task_count']} tasks for {len(images)} images: {summary}")
    by_name: dict[str, Json] = {}
    for task in list_tasks(client, project_id):
        filename = str(task["data"].get("image", "")).rsplit("/", 1)[-1]
        by_name[filename.split("-", 1)[-1].removesuffix(".png")] = task
    missing = [name for name, _ in images if name not in by_name]
    if missing:
        raise ValueError(f"no task found for images {missing}; tasks: {sorted(by_name)}")
    return [by_name[name] for name, _ in images]


def list_tasks(client: httpx.Client, project_id: int) -> list[Json]:
    """All tasks of a project, oldest first, with their annotations and predictions."""
    tasks: list[Json] = []
    page = 1
    while True:
        resp = client.get("/api/tasks", params={"project": project_id, "page": page, "page_size": 100, "fields": "all"})
        if resp.status_code == 404 and tasks:  # past the last page
            break
        body = _json(resp)
        batch = body["tasks"] if isinstance(body, dict) else body
        tasks.extend(batch)
        total = body.get("total", len(tasks)) if isinstance(body, dict) else len(tasks)
        if not batch or len(tasks) >= total:
            break
        page += 1
    return sorted(tasks, key=lambda t: t["id"])


def get_task(client: httpx.Client, task_id: int) -> Json:
    return _json(client.get(f"/api/tasks/{task_id}"))


def brush_result(
    mask: np.ndarray, label: str, *, from_name: str = "tag", to_name: str = "image", region_id: str | None = None
) -> Json:
    """A BrushLabels region for ``mask`` (``(H, W)``, nonzero = inside) in LS's RLE format."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    height, width = mask.shape
    rle = mask2rle((mask > 0).astype(np.uint8) * 255)
    return {
        "id": region_id or uuid.uuid4().hex[:10],
        "type": "brushlabels",
        "from_name": from_name,
        "to_name": to_name,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {"format": "rle", "rle": [int(v) for v in rle], "brushlabels": [label]},
    }


def polygon_result(
    points_pct: Sequence[tuple[float, float]],
    label: str,
    *,
    width: int,
    height: int,
    from_name: str = "poly",
    to_name: str = "image",
    region_id: str = "poly1",
) -> Json:
    """A PolygonLabels region; ``points_pct`` are ``(x, y)`` in percent of the image size (0-100)."""
    return {
        "id": region_id,
        "type": "polygonlabels",
        "from_name": from_name,
        "to_name": to_name,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {"points": [[float(x), float(y)] for x, y in points_pct], "closed": True, "polygonlabels": [label]},
    }


def create_annotation(client: httpx.Client, task_id: int, result: list[Json], **fields: Any) -> Json:
    """``POST /api/tasks/{id}/annotations/``: a submitted annotation, which fires ANNOTATION_CREATED."""
    return _json(client.post(f"/api/tasks/{task_id}/annotations/", json={"result": result, **fields}))


def update_annotation(client: httpx.Client, annotation_id: int, result: list[Json], **fields: Any) -> Json:
    return _json(client.patch(f"/api/annotations/{annotation_id}/", json={"result": result, **fields}))


# ---------------------------------------------------------------- ML backends and predictions


def connect_ml_backend(
    client: httpx.Client,
    project_id: int,
    url: str,
    *,
    title: str = "samloop",
    is_interactive: bool = True,
    extra_params: Json | None = None,
    basic_auth: tuple[str, str] | None = None,
) -> Json:
    """``POST /api/ml``. LS calls the backend's /health and /setup and creates a ``<url>/webhook`` webhook.

    Returns the ML backend object (``id``, ``state``, ``model_version``...).
    """
    body: Json = {
        "url": url,
        "project": project_id,
        "is_interactive": is_interactive,
        "title": title,
        "extra_params": extra_params or {},
    }
    if basic_auth:
        body.update(auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1])
    return _json(client.post("/api/ml", json=body))


def list_ml_backends(client: httpx.Client, project_id: int) -> list[Json]:
    return _json(client.get("/api/ml", params={"project": project_id}))


def get_ml_backend(client: httpx.Client, ml_backend_id: int) -> Json:
    return _json(client.get(f"/api/ml/{ml_backend_id}"))


def update_ml_backend(client: httpx.Client, ml_backend_id: int, **fields: Any) -> Json:
    """``PATCH /api/ml/{id}``; LS calls /setup again with the new values.

    LS 1.23.2 answers 500 to a PATCH without ``url`` and ``project`` (its health check and /setup call need
    them), and validates the PATCH with the fields sent only: without the auth fields it calls a basic-auth
    backend without credentials and answers 400. So the current values are sent along unless given (an
    empty ``basic_auth_pass`` makes LS keep the stored password).
    """
    current = get_ml_backend(client, ml_backend_id)
    kept: Json = {"url": current["url"], "project": current["project"]}
    if current.get("auth_method") == "BASIC_AUTH":
        kept.update(auth_method="BASIC_AUTH", basic_auth_user=current["basic_auth_user"], basic_auth_pass="")
    fields = {**kept, **fields}
    return _json(client.patch(f"/api/ml/{ml_backend_id}", json=fields))


def update_ml_extra_params(client: httpx.Client, ml_backend_id: int, extra_params: Json) -> Json:
    return update_ml_backend(client, ml_backend_id, extra_params=extra_params)


def start_training(client: httpx.Client, ml_backend_id: int) -> Json:
    """``POST /api/ml/{id}/train``: LS sends START_TRAINING to the backend's /webhook."""
    return _json(client.post(f"/api/ml/{ml_backend_id}/train", json={}))


def retrieve_predictions(client: httpx.Client, project_id: int, task_ids: Sequence[int] | None = None) -> Json:
    """Data-manager action "Retrieve predictions": a batch /predict for all (or the given) tasks."""
    selected = {"all": False, "included": list(task_ids)} if task_ids else {"all": True, "excluded": []}
    return _json(
        client.post(
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": project_id},
            json={"selectedItems": selected},
        )
    )


def list_predictions(client: httpx.Client, project_id: int) -> list[Json]:
    """``GET /api/predictions?project=ID``: stored predictions with ``task``, ``result``, ``model_version``."""
    return _json(client.get("/api/predictions", params={"project": project_id}))


def keypoint_context(
    x_pct: float,
    y_pct: float,
    label: str,
    *,
    width: int,
    height: int,
    is_positive: bool = True,
    from_name: str = "smart",
    to_name: str = "image",
) -> Json:
    """The ``context`` of one smart keypoint click at ``(x_pct, y_pct)`` percent, as the editor sends it."""
    return {
        "result": [
            {
                "id": "click1",
                "type": "keypointlabels",
                "from_name": from_name,
                "to_name": to_name,
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "is_positive": is_positive,
                "value": {"x": x_pct, "y": y_pct, "width": 0.5, "keypointlabels": [label]},
            }
        ]
    }


def interactive_annotating(client: httpx.Client, ml_backend_id: int, task_id: int, context: Json) -> Json:
    """``POST /api/ml/{id}/interactive-annotating``: LS forwards a /predict with ``params.context``.

    Returns LS's answer, ``{"data": {"result": [...], ...}}``.
    """
    return _json(
        client.post(f"/api/ml/{ml_backend_id}/interactive-annotating", json={"task": task_id, "context": context})
    )


def list_webhooks(client: httpx.Client, project_id: int) -> list[Json]:
    """``GET /api/webhooks?project=ID``: includes the one LS made for a connected ML backend."""
    return _json(client.get("/api/webhooks", params={"project": project_id}))


def wait_until(fn: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.5) -> T:
    """Call ``fn`` until it returns something truthy; raise ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s (last value {value!r})")
        time.sleep(interval)
