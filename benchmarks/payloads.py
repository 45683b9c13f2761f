"""Request bodies shaped the way Label Studio 1.20+ sends them to an ML backend."""

from __future__ import annotations

import uuid
from typing import Any

from benchmarks.scenes import LABEL_CONFIG

PROJECT_CREATED_TS = "1712345678"


def task(task_id: int, url: str, project: int, predictions: list[dict] | None = None) -> dict:
    """A task as LS serialises it into /predict (interactive requests also carry its predictions)."""
    return {"id": task_id, "data": {"image": url}, "meta": {}, "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z", "is_labeled": False, "overlap": 1, "inner_id": task_id,
            "total_annotations": 0, "cancelled_annotations": 0, "total_predictions": len(predictions or []),
            "annotations": [], "predictions": predictions or [], "drafts": [], "file_upload": None,
            "project": project}


def predict_body(project: int, tasks: list[dict], context: dict | None = None) -> dict:
    return {"tasks": tasks, "model_version": None, "project": f"{project}.{PROJECT_CREATED_TS}",
            "label_config": LABEL_CONFIG, "params": {"login": None, "password": None, "context": context}}


def keypoint(x_pct: float, y_pct: float, label: str, positive: bool, size: tuple[int, int]) -> dict:
    height, width = size
    return {"original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"x": x_pct, "y": y_pct, "width": 0.6, "keypointlabels": [label]},
            "id": uuid.uuid4().hex[:10], "from_name": "kp", "to_name": "image", "type": "keypointlabels",
            "origin": "manual", "is_positive": positive}


def click_context(points: list[tuple[float, float, bool]], label: str, size: tuple[int, int]) -> dict:
    return {"result": [keypoint(x, y, label, positive, size) for x, y, positive in points]}


def drafted_regions(count: int, size: tuple[int, int], radius: int = 60) -> list[dict]:
    """``count`` brush regions (discs) as Label Studio sends an annotation's drafted regions with every
    interactive request (LSMB#704): 3.7-4.7 KB of JSON each, 0.36-0.47 MB for 100 (compact separators or
    ``json.dumps``' default spaces, which the benchmark's HTTP client sends)."""
    import numpy as np

    from backend.regions import encode_brush

    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    regions = []
    for k in range(count):
        cx, cy = radius + (37 * k) % max(1, width - 2 * radius), radius + (53 * k) % max(1, height - 2 * radius)
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
        regions.append({"original_width": width, "original_height": height, "image_rotation": 0,
                        "value": {"format": "rle", "rle": encode_brush(disc), "brushlabels": ["a"]},
                        "id": uuid.uuid4().hex[:10], "from_name": "tag", "to_name": "image", "type": "brushlabels",
                        "origin": "manual"})
    return regions


def setup_body(project: int, extra_params: dict | None = None) -> dict:
    return {"project": f"{project}.{PROJECT_CREATED_TS}", "schema": LABEL_CONFIG, "hostname": "http://localhost:8080",
            "access_token": "", "model_version": None, "extra_params": extra_params}


def annotation_created(project: int, task_id: int, labeled_tasks: int) -> dict[str, Any]:
    """The webhook LS sends when an annotator submits a task."""
    return {"action": "ANNOTATION_CREATED",
            "annotation": {"id": task_id, "task": task_id, "project": project, "result": [], "was_cancelled": False},
            "task": {"id": task_id, "project": project, "data": {}},
            "project": {"id": project, "title": f"bench {project}", "num_tasks_with_annotations": labeled_tasks}}


def stored_prediction(result: dict) -> dict:
    """A /predict result as LS stores it and later sends back inside the task."""
    return {"id": 1, "result": result.get("result", []), "score": result.get("score"),
            "model_version": result.get("model_version"), "created_ago": "0 minutes"}
