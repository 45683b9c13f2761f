"""The loop at any project size: ``python -m benchmarks.job_timing --scaling``.

For each project size (10, 100, 1,000 labeled tasks by default) a fresh ``python -m backend`` with its
``make run`` defaults (embedded Redis, one training worker) runs against the Label Studio stand-in:

1. ``/setup`` connects the project; the backend encodes its images ahead (the images repeat, twenty
   distinct scenes, so encoding ahead stays cheap at any size).
2. One annotation event trains the first version: a full run over every labeled task.
3. While a ``/setup`` a second goes on (about what ten annotators opening tasks produce), a burst of one
   new annotation and then a burst of five: each annotation changes a task in the stand-in, then its
   webhook is sent (the five 0.3 s apart). Timed from the burst's last webhook to the moment ``/predict``
   serves the new version, with the job's stages from its log and the worker's peak RSS.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import payloads
from benchmarks.processes import BackendProcess, MemorySampler
from benchmarks.runner import _brush
from benchmarks.scenarios import TaskImage, training_run
from benchmarks.scenes import CLASSES, LABEL_CONFIG, make_scene

log = logging.getLogger(__name__)

SIZES = (10, 100, 1000)
DISTINCT_SCENES = 20
BURSTS = (1, 5)
TIMEOUT_S = 1800.0


def _label_studio(size: int, hw: tuple[int, int]) -> tuple[Any, list[TaskImage], list]:
    """The stand-in with project ``300 + size``: ``size`` labeled tasks over ``DISTINCT_SCENES`` images."""
    from backend.regions import encode_brush
    from testkit.fake_label_studio import FakeLabelStudio

    ls = FakeLabelStudio().__enter__()
    project = 300 + size
    ls.add_project(project, LABEL_CONFIG)
    scenes = [make_scene(20_000 + k, *hw) for k in range(DISTINCT_SCENES)]
    urls = [ls.add_image(project, f"scene{k:02d}.jpg", scene.jpeg) for k, scene in enumerate(scenes)]
    tasks = []
    for index in range(size):
        scene, url = scenes[index % DISTINCT_SCENES], urls[index % DISTINCT_SCENES]
        result = [_brush(encode_brush(scene.masks[name]), name, scene.size) for name in CLASSES]
        tasks.append(TaskImage(ls.add_task(project, {"image": url}, [{"result": result}]), url, scene))
    return ls, tasks, scenes


def _setups_every_second(client: httpx.Client, url: str, project: int, stop: threading.Event) -> list[float]:
    latencies: list[float] = []

    def loop() -> None:
        while not stop.wait(1.0):
            started = time.perf_counter()
            client.post(url + "/setup", json=payloads.setup_body(project))
            latencies.append((time.perf_counter() - started) * 1000.0)

    threading.Thread(target=loop, name="setup-load", daemon=True).start()
    return latencies


def _wait_encoded(client: httpx.Client, url: str, project: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    key = payloads.setup_body(project)["project"]
    while time.monotonic() < deadline:
        progress = client.get(f"{url}/projects/{key}/settings").json().get("preencode_progress") or {}
        if progress.get("state") in ("done", "failed", "off"):
            return progress
        time.sleep(0.5)
    raise TimeoutError(f"encoding ahead of project {project} did not finish in {timeout} s")


def _burst(ls: Any, client: httpx.Client, backend: BackendProcess, project: int, tasks: list[TaskImage],
           count: int, labeled: int, round_: int) -> dict[str, Any]:
    """``count`` annotations changed and announced; timed from the last webhook to the served version."""
    changed = tasks[round_ * 7 % len(tasks):][:count] or tasks[:count]
    from backend.regions import encode_brush

    for k, task in enumerate(changed):
        shifted = {name: mask[::-1] for name, mask in task.scene.masks.items()}  # a visibly different annotation
        ls.set_annotations(task.task_id, [{"result": [_brush(encode_brush(shifted[name]), name, task.scene.size)
                                                      for name in CLASSES]}])
        if k < count - 1:
            client.post(backend.url + "/webhook", json=payloads.annotation_created(project, task.task_id, labeled))
            time.sleep(0.3)
    outcome = training_run(client, backend.url, project, labeled, backend.log_path, changed[-1], TIMEOUT_S)
    return outcome.__dict__


def run_size(size: int, image_size: int, work: Path, env: dict[str, str], logs: Path | None = None
             ) -> dict[str, Any]:
    hw = (image_size * 3 // 4, image_size)
    ls, tasks, _ = _label_studio(size, hw)
    project = 300 + size
    backend = BackendProcess({**env, "LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.legacy_token,
                              "SAMLOOP_DATA_DIR": str(work / f"data-{size}")}, work / f"backend-{size}.log")
    out: dict[str, Any] = {"labeled_tasks": size, "distinct_images": min(size, DISTINCT_SCENES)}
    memory: MemorySampler | None = None
    try:
        backend.start()
        memory = MemorySampler(backend.process.pid).start()
        with httpx.Client(timeout=120.0) as client:
            client.post(backend.url + "/setup", json=payloads.setup_body(project)).raise_for_status()
            out["encoded_ahead"] = _wait_encoded(client, backend.url, project, TIMEOUT_S)
            memory.phase("first")
            out["first_version"] = training_run(client, backend.url, project, size, backend.log_path, tasks[0],
                                                TIMEOUT_S).__dict__
            stop = threading.Event()
            latencies = _setups_every_second(client, backend.url, project, stop)
            try:
                for round_, count in enumerate(BURSTS, start=1):
                    memory.phase(f"burst-{count}")
                    out[f"burst_{count}"] = _burst(ls, client, backend, project, tasks, count, size, round_)
            finally:
                stop.set()
            out["setup_calls"] = len(latencies)
            out["setup_p50_ms"] = round(sorted(latencies)[len(latencies) // 2], 1) if latencies else None
            out["task_listings"] = len(ls.requests_to("/api/tasks"))
    finally:
        if memory is not None:
            memory.stop()
            out["memory"] = memory.summary()
        backend.stop()
        ls.__exit__(None, None, None)
        if logs is not None:
            logs.mkdir(parents=True, exist_ok=True)
            shutil.copy(backend.log_path, logs / backend.log_path.name)
    return out


def run(sizes: tuple[int, ...], image_size: int, work_dir: Path | None = None, logs: Path | None = None
        ) -> dict[str, Any]:
    env = {"SAM_MODEL": "vit_t", "SAM_CHECKPOINT": "random", "SAM_IMAGE_SIZE": str(image_size), "REDIS_URL": "",
           "SAMLOOP_ADAPTER_STORE": "local", "BASIC_AUTH_USER": "", "BASIC_AUTH_PASS": "", "WEBHOOK_SECRET": "",
           "TRAIN_MIN_ANNOTATIONS": "1", "LOG_LEVEL": "INFO"}
    with tempfile.TemporaryDirectory(dir=work_dir) as work:
        return {"image_size": image_size,
                "sizes": [run_size(size, image_size, Path(work), env, logs) for size in sizes]}


def plot(results: dict[str, Any], path: Path) -> None:
    """Seconds from the last annotation of a burst to the served version, against labeled tasks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["labeled_tasks"] for r in results["sizes"]]
    figure, axes = plt.subplots(figsize=(6, 3.6), dpi=110)
    axes.plot(sizes, [r["first_version"]["seconds_to_active"] for r in results["sizes"]], "s--", color="#999",
              label="first version (full run)")
    for count, marker in zip(BURSTS, "ov", strict=False):
        axes.plot(sizes, [r[f"burst_{count}"]["seconds_to_active"] for r in results["sizes"]], marker + "-",
                  label=f"after a burst of {count} (incremental)")
    axes.set_xscale("log")
    axes.set_xlabel("labeled tasks in the project")
    axes.set_ylabel("seconds to a served version")
    axes.set_title(f"vit_t {results['image_size']} px, {results.get('machine', {}).get('cpu_model', 'CPU')}",
                   fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
