"""The measured scenarios, each driven through the backend's HTTP API like Label Studio drives it.

- ``annotator_trace``: open a task (the automatic /predict LS sends), clicks with growing point
  sets, next task; tasks whose first click comes without an open; returns to earlier tasks.
- ``batch_predictions``: /predict with N tasks at once (LS's "Retrieve predictions" sends all
  selected tasks in one request, with a 100 s timeout).
- ``training_run``: the ANNOTATION_CREATED webhook -> the new active adapter version, through the
  backend's scheduler, its embedded rq worker and the adapter registry.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import payloads
from benchmarks.scenes import CLASSES, Scene, click_sequence


class BenchmarkError(RuntimeError):
    """The backend answered something a benchmark cannot use (the message has the details)."""


@dataclass
class TaskImage:
    task_id: int
    url: str
    scene: Scene


@dataclass
class Sample:
    kind: str
    ms: float
    request_bytes: int
    response_bytes: int
    regions: int


def post_json(client: httpx.Client, url: str, body: dict) -> tuple[float, int, int, dict]:
    """POST pre-serialised JSON; time until the whole response body has arrived (ms)."""
    data = json.dumps(body).encode()
    started = time.perf_counter()
    response = client.post(url, content=data, headers={"Content-Type": "application/json"})
    content = response.content
    ms = (time.perf_counter() - started) * 1000.0
    if response.status_code >= 300:
        raise BenchmarkError(f"POST {url} -> {response.status_code}: {content[:500]!r}")
    return ms, len(data), len(content), json.loads(content)


def percentiles(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    arr = np.asarray(values, dtype=float)
    return {"n": int(arr.size), "p50": round(float(np.percentile(arr, 50)), 1),
            "p95": round(float(np.percentile(arr, 95)), 1), "mean": round(float(arr.mean()), 1),
            "min": round(float(arr.min()), 1), "max": round(float(arr.max()), 1)}


def _regions(result: dict) -> int:
    return len(result.get("result") or [])


def _check_results(answer: dict, expected: int) -> list[dict]:
    results = answer.get("results")
    if not isinstance(results, list) or len(results) != expected:
        raise BenchmarkError(f"expected {expected} results, got {str(answer)[:300]}")
    errors = [r["error"] for r in results if r.get("error")]
    if errors:
        raise BenchmarkError(f"{len(errors)} task(s) failed, first: {errors[0]}")
    return results


# ----- annotator trace ---------------------------------------------------------------------------------------


@dataclass
class TracePlan:
    new_images: int = 20  # opened (automatic /predict), then clicked
    clicks: int = 5  # clicks per image, growing point sets
    cold_images: int = 5  # clicked without an automatic /predict first (LS had a prediction already)
    revisits: int = 10  # returns to earlier images, alternating oldest/newest
    revisit_clicks: int = 2
    photos: int = 0  # 12 MP phone photos (4032 x 3024 JPEG), clicked without an automatic /predict first
    # Opened images clicked again twice over, the same points with and without 100 drafted regions in
    # the context (what Label Studio sends with every click once an annotation has regions).
    context_images: int = 0

    @property
    def images_needed(self) -> int:
        return self.new_images + self.cold_images


DRAFTED_REGIONS = 100
KIND_ORDER = ["open", "first_click", "cold_first_click", "revisit_first_click", "later_click", "photo_first_click",
              "photo_later_click", "plain_context_click", "drafted_context_click"]
KIND_TITLES = {
    "open": "open a task (automatic /predict, 4 classes)",
    "first_click": "first click after opening",
    "cold_first_click": "first click, task not opened by /predict",
    "revisit_first_click": "first click on a revisited task",
    "later_click": "later clicks (2nd..5th point)",
    "photo_first_click": "first click on a 12 MP photo, not opened",
    "photo_later_click": "later clicks on a 12 MP photo",
    "plain_context_click": "warm clicks, context: the points only",
    "drafted_context_click": f"the same clicks, context: the points and {DRAFTED_REGIONS} drafted brush regions",
}


def _clicks(client: httpx.Client, url: str, project: int, image: TaskImage, stored: list[dict], label: str,
            count: int, first_kind: str, seed: int, samples: list[Sample], later_kind: str = "later_click") -> None:
    body_task = payloads.task(image.task_id, image.url, project, stored)
    for k, points in enumerate(click_sequence(image.scene, label, count, seed)):
        context = payloads.click_context(points, label, image.scene.size)
        ms, sent, got, answer = post_json(client, url, payloads.predict_body(project, [body_task], context))
        (result,) = _check_results(answer, 1)
        samples.append(Sample(first_kind if k == 0 else later_kind, ms, sent, got, _regions(result)))


def _context_pairs(client: httpx.Client, url: str, project: int, image: TaskImage, label: str, count: int,
                   seed: int, drafted: list[dict], samples: list[Sample]) -> None:
    """Each click twice, alternately with and without the drafted regions (warm embedding both times)."""
    body_task = payloads.task(image.task_id, image.url, project)
    for points in click_sequence(image.scene, label, count, seed):
        plain = payloads.click_context(points, label, image.scene.size)
        for kind, context in (("plain_context_click", plain),
                              ("drafted_context_click", {"result": plain["result"] + drafted})):
            ms, sent, got, answer = post_json(client, url, payloads.predict_body(project, [body_task], context))
            (result,) = _check_results(answer, 1)
            samples.append(Sample(kind, ms, sent, got, _regions(result)))


def annotator_trace(client: httpx.Client, base_url: str, project: int, images: list[TaskImage],
                    plan: TracePlan, photos: list[TaskImage] | None = None) -> dict[str, Any]:
    """Run the trace; returns per-kind latency percentiles and the raw samples."""
    if len(images) < plan.images_needed or len(photos or []) < plan.photos:
        raise ValueError(f"the trace needs {plan.images_needed} images and {plan.photos} photos, got {len(images)} "
                         f"and {len(photos or [])}")
    url = base_url + "/predict"
    samples: list[Sample] = []
    opened: list[tuple[TaskImage, list[dict], str]] = []
    started = time.perf_counter()
    for index, image in enumerate(images[: plan.new_images]):
        ms, sent, got, answer = post_json(client, url, payloads.predict_body(project, [payloads.task(
            image.task_id, image.url, project)]))
        (result,) = _check_results(answer, 1)
        samples.append(Sample("open", ms, sent, got, _regions(result)))
        stored = [payloads.stored_prediction(result)]
        label = CLASSES[index % len(CLASSES)]
        opened.append((image, stored, label))
        _clicks(client, url, project, image, stored, label, plan.clicks, "first_click", index, samples)
    for index, image in enumerate(images[plan.new_images : plan.images_needed]):
        label = CLASSES[index % len(CLASSES)]
        _clicks(client, url, project, image, [], label, plan.clicks, "cold_first_click", 1000 + index, samples)
    order = [opened[(k // 2) if k % 2 == 0 else -(k // 2) - 1] for k in range(min(plan.revisits, len(opened)))]
    for index, (image, stored, label) in enumerate(order):
        _clicks(client, url, project, image, stored, label, plan.revisit_clicks, "revisit_first_click",
                2000 + index, samples)
    for index, image in enumerate((photos or [])[: plan.photos]):
        label = CLASSES[index % len(CLASSES)]
        _clicks(client, url, project, image, [], label, plan.clicks, "photo_first_click", 3000 + index, samples,
                later_kind="photo_later_click")
    drafted = payloads.drafted_regions(DRAFTED_REGIONS, images[0].scene.size) if plan.context_images else []
    for index, (image, _, label) in enumerate(opened[: plan.context_images]):
        _context_pairs(client, url, project, image, label, plan.clicks, 4000 + index, drafted, samples)
    total = time.perf_counter() - started
    by_kind = {kind: percentiles([s.ms for s in samples if s.kind == kind]) for kind in KIND_ORDER}
    sizes = {kind: int(np.median([s.response_bytes for s in samples if s.kind == kind]))
             for kind in KIND_ORDER if any(s.kind == kind for s in samples)}
    request_sizes = {kind: int(np.median([s.request_bytes for s in samples if s.kind == kind]))
                     for kind in KIND_ORDER if any(s.kind == kind for s in samples)}
    return {"plan": asdict(plan), "latency_ms": by_kind, "median_response_bytes": sizes,
            "median_request_bytes": request_sizes, "total_seconds": round(total, 2), "requests": len(samples),
            "samples": [asdict(s) for s in samples]}


def wait_for_click_decoder(client: httpx.Client, base_url: str, timeout: float = 900.0) -> dict[str, Any]:
    """/health's click_decoder once the background compile has ended (compiled, or eager and why): clicks
    measured before would time the eager decoder."""
    deadline = time.monotonic() + timeout
    while True:
        state = client.get(base_url + "/health").json().get("click_decoder") or {}
        if state.get("reason") != "warming up" or time.monotonic() > deadline:
            return state
        time.sleep(1.0)


# ----- batch pre-annotation ----------------------------------------------------------------------------------


def batch_predictions(client: httpx.Client, base_url: str, project: int, images: list[TaskImage],
                      sizes: list[int]) -> list[dict[str, Any]]:
    """One /predict per size, each on images the backend has not seen (cold cache)."""
    if sum(sizes) > len(images):
        raise ValueError(f"batches {sizes} need {sum(sizes)} images, got {len(images)}")
    out = []
    offset = 0
    for size in sizes:
        chunk = images[offset : offset + size]
        offset += size
        tasks = [payloads.task(image.task_id, image.url, project) for image in chunk]
        ms, sent, got, answer = post_json(client, base_url + "/predict", payloads.predict_body(project, tasks))
        results = _check_results(answer, size)
        seconds = ms / 1000.0
        out.append({"tasks": size, "seconds": round(seconds, 2), "images_per_second": round(size / seconds, 3),
                    "seconds_per_image": round(seconds / size, 3), "response_bytes": got,
                    "regions": sum(_regions(r) for r in results)})
    return out


# ----- clicks while something else runs ----------------------------------------------------------------------


class BackgroundClicks:
    """An annotator clicking on an already opened task every ``interval`` s, in a thread, until stopped."""

    def __init__(self, base_url: str, project: int, image: TaskImage, interval: float = 1.0) -> None:
        self.base_url = base_url
        self.project = project
        self.image = image
        self.interval = interval
        self.samples: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="background-clicks", daemon=True)

    def _run(self) -> None:
        label = CLASSES[0]
        sequences = click_sequence(self.image.scene, label, 5, seed=4242)
        task = payloads.task(self.image.task_id, self.image.url, self.project)
        with httpx.Client(timeout=600) as client:
            k = 0
            while not self._stop.is_set():
                context = payloads.click_context(sequences[k % len(sequences)], label, self.image.scene.size)
                try:
                    ms, *_ = post_json(client, self.base_url + "/predict",
                                       payloads.predict_body(self.project, [task], context))
                    self.samples.append(ms)
                except (BenchmarkError, httpx.HTTPError) as exc:
                    self.errors.append(str(exc)[:200])
                k += 1
                self._stop.wait(self.interval)

    def __enter__(self) -> BackgroundClicks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    def summary(self) -> dict[str, Any]:
        return {"interval_s": self.interval, "latency_ms": percentiles(self.samples), "errors": len(self.errors)}


# ----- training ----------------------------------------------------------------------------------------------

_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \w+ training\.jobs(?:\.\w+)*: project (\S+): (.*)$")
# Stage boundaries in the job's log (training.jobs' JobProgress.stage messages), in order.
_STAGES = [
    ("debounce", "waiting for the burst"),
    ("export", "fetching changed tasks"),
    ("model_load", "held-out tasks"),
    ("train", " run: up to "),
    ("evaluate", "scoring the candidate"),
    ("publish", "publishing:"),
    ("done", " published ("),
]


def stage_times(log_path: Path, project: str, since: float) -> dict[str, float]:
    """Epoch seconds at which the job logged each stage for ``project`` (first time after ``since``)."""
    found: dict[str, float] = {}
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return found
    for line in lines:
        match = _LOG_LINE.match(line)
        # The job logs the project's key ("101.1712345678"): its id is what the benchmark knows.
        if not match or match.group(3).partition(".")[0] != project:
            continue
        stamp = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + int(match.group(2)) / 1000.0
        if stamp + 1.0 < since:
            continue
        for name, needle in _STAGES:
            if name not in found and needle in match.group(4):
                found[name] = stamp
    return found


def stage_durations(times: dict[str, float], webhook_at: float, active_at: float) -> dict[str, float]:
    """Seconds per stage: queue pickup, debounce, export, model load, train, evaluate, publish, noticed."""
    points = [("queued", webhook_at)] + [(name, times[name]) for name, _ in _STAGES if name in times]
    points.append(("active_seen", active_at))
    out = {}
    for (name, start), (_, end) in zip(points, points[1:], strict=False):
        out[name] = round(max(0.0, end - start), 2)
    return out


@dataclass
class TrainingOutcome:
    labeled_images: int
    seconds_to_active: float
    webhook_ms: float
    active_version: str
    stages: dict[str, float] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    seconds_per_step: float | None = None
    worker_peak_rss_mb: float | None = None
    served_by_backend: bool = False
    clicks_meanwhile: dict[str, Any] | None = None
    worker_niceness: int | None = None


def _active(client: httpx.Client, base_url: str, project: int) -> tuple[str | None, dict]:
    response = client.get(base_url + "/versions", params={"project": str(project)})
    if response.status_code != 200:
        raise BenchmarkError(f"GET /versions -> {response.status_code}: {response.text[:300]}")
    answer = response.json()
    # Filtered by id, the answer holds at most the one project Label Studio set up under that id.
    return next(iter(answer.get("active", {}).values()), None), answer


def training_run(client: httpx.Client, base_url: str, project: int, labeled: int, log_path: Path,
                 check_task: TaskImage, timeout: float) -> TrainingOutcome:
    """Send ANNOTATION_CREATED and wait until /versions shows a new active version for ``project``."""
    before, _ = _active(client, base_url, project)
    webhook_at = time.time()
    started = time.perf_counter()
    response = client.post(base_url + "/webhook", json=payloads.annotation_created(project, 1, labeled))
    webhook_ms = (time.perf_counter() - started) * 1000.0
    if response.status_code >= 300:
        raise BenchmarkError(f"POST /webhook -> {response.status_code}: {response.text[:300]}")
    deadline = time.perf_counter() + timeout
    while True:
        active, answer = _active(client, base_url, project)
        if active is not None and active != before:
            break
        if time.perf_counter() > deadline:
            raise BenchmarkError(f"no new active version for project {project} after {timeout} s")
        time.sleep(0.1)
    elapsed = time.perf_counter() - started
    active_at = time.time()
    details = next((d for d in answer.get("details", []) if d.get("model_version") == active), {})
    metadata = details.get("metadata", {})
    train = metadata.get("train", {})
    steps, seconds = train.get("steps"), train.get("seconds")
    outcome = TrainingOutcome(labeled, round(elapsed, 2), round(webhook_ms, 1), active,
                              train=train, data=metadata.get("data", {}))
    if steps:
        outcome.seconds_per_step = round(seconds / steps, 3)
    outcome.stages = stage_durations(stage_times(log_path, str(project), webhook_at), webhook_at, active_at)
    _, _, _, answer = post_json(client, base_url + "/predict", payloads.predict_body(project, [payloads.task(
        check_task.task_id, check_task.url, project)]))
    outcome.served_by_backend = answer["results"][0].get("model_version") == active
    return outcome
