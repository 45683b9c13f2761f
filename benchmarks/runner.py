"""Run every variant (model x image size x optimized/baseline) against a real backend subprocess."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from benchmarks import hotspots, payloads
from benchmarks.machine import describe, load_average
from benchmarks.plans import RunPlan, VariantPlan
from benchmarks.processes import BackendProcess
from benchmarks.scenarios import (
    BackgroundClicks,
    TaskImage,
    annotator_trace,
    batch_predictions,
    training_run,
    wait_for_click_decoder,
)
from benchmarks.scenes import CLASSES, LABEL_CONFIG, make_scene

log = logging.getLogger("benchmarks")

TRACE_PROJECT = 1
# Training projects: 100 + labeled images; the same images again at 200 + n for training while an annotator
# clicks (the embedded worker at its default SAMLOOP_WORKER_NICE), and at 300 + n for the same with the
# worker reniced to 0, the priority of the backend, to show what the lower priority buys.
CONCURRENT_PROJECTS = 200
RENICED_PROJECTS = 300
# Where the stand-in checkpoint of ``checkpoint="standin"`` variants is built once and kept.
STANDIN_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "samloop" / "standin"
COMPARED_NICENESS = 0
PHOTO_HW = (3024, 4032)
EMBED_CHANNELS = 256
BYTES_PER_FLOAT = 4
MB = 1024 * 1024
# LS waits this long for /predict (100 s); a "Retrieve predictions" batch must fit in it.
LS_PREDICT_TIMEOUT_S = 100.0


def embedding_mb(image_size: int) -> int:
    """Cache size that holds exactly one image embedding (the baseline's 'cache of one image')."""
    grid = image_size // 16
    return max(1, math.ceil(EMBED_CHANNELS * grid * grid * BYTES_PER_FLOAT / MB))


def backend_env(plan: RunPlan, variant: VariantPlan, kind: str, data_dir: Path, ls_url: str, ls_token: str,
                worker: bool) -> dict[str, str]:
    env = {
        "SAM_MODEL": variant.model, "SAM_CHECKPOINT": checkpoint_value(variant.checkpoint),
        "SAM_IMAGE_SIZE": str(variant.image_size),
        "SAMLOOP_DATA_DIR": str(data_dir), "SAMLOOP_ADAPTER_STORE": "local", "REDIS_URL": "",
        "SAMLOOP_EMBEDDED_WORKER": "true" if worker else "false",
        "LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": ls_token,
        "BASIC_AUTH_USER": "", "BASIC_AUTH_PASS": "", "WEBHOOK_SECRET": "",
        "TRAIN_MAX_SECONDS": str(plan.train_max_seconds), "TRAIN_MIN_ANNOTATIONS": "1",
        "DEVICE": "auto", "LOG_LEVEL": "INFO",
    }
    if kind == "baseline":
        env |= {"PRECISION": "fp32", "EMBEDDING_CACHE_MB": str(embedding_mb(variant.image_size)),
                "ENCODER_BATCH_SIZE": "1", "SAMLOOP_WORKER_NICE": "0"}
    # The optimized run uses the backend's own defaults: what `make run` gives.
    return env | plan.extra_env


def checkpoint_value(checkpoint: str) -> str:
    """``SAM_CHECKPOINT`` for a variant: ``random``, or the stand-in's file (built on first use, ~2 min)."""
    if checkpoint == "random":
        return checkpoint
    if checkpoint != "standin":
        raise ValueError(f"checkpoint must be 'random' or 'standin', got {checkpoint!r}")
    from testkit.standin import build_standin

    return str(build_standin(STANDIN_CACHE))


def publish_adapter(data_dir: Path, model: str, image_size: int, project: int, checkpoint: str = "random") -> str:
    """A 4-class adapter (random prompts, LoRA B = 0) published as the project's active version."""
    from training.model.loading import new_adapter_model
    from training.model.weights import resolve_checkpoint
    from training.registry import LocalRegistry

    weights = resolve_checkpoint(model, checkpoint_value(checkpoint), None)
    adapter = new_adapter_model(weights, image_size, list(CLASSES))
    registry = LocalRegistry(data_dir / "adapters")
    info = registry.publish(str(project), adapter.to_bytes({"benchmark": True}), {"benchmark": True}, activate=True)
    return f"v{info.version}"


@contextmanager
def label_studio(plan: RunPlan) -> Iterator[tuple[Any, list[TaskImage], list[TaskImage], dict[int, list[TaskImage]]]]:
    """The LS stand-in with the trace/batch images and photos (project 1) and labeled projects for training."""
    from backend.regions import encode_brush
    from testkit.fake_label_studio import FakeLabelStudio

    height, width = plan.image_hw
    with FakeLabelStudio() as ls:
        ls.add_project(TRACE_PROJECT, LABEL_CONFIG)
        images = []
        for index in range(plan.images_needed):
            scene = make_scene(index, height, width)
            url = ls.add_image(TRACE_PROJECT, f"img{index:03d}.jpg", scene.jpeg)
            task_id = ls.add_task(TRACE_PROJECT, {"image": url})
            images.append(TaskImage(task_id, url, scene))
        photos = []
        for index in range(plan.photos_needed):
            scene = make_scene(5_000 + index, *PHOTO_HW)
            url = ls.add_image(TRACE_PROJECT, f"photo{index:03d}.jpg", scene.jpeg)
            photos.append(TaskImage(ls.add_task(TRACE_PROJECT, {"image": url}), url, scene))
        training: dict[int, list[TaskImage]] = {}
        projects = [(100 + size, size) for size in plan.training_sizes]
        projects += [(offset + size, size) for size in plan.concurrent_sizes
                     for offset in (CONCURRENT_PROJECTS, RENICED_PROJECTS)]
        for project, size in projects:
            ls.add_project(project, LABEL_CONFIG)
            training[project] = []
            for index in range(size):
                scene = make_scene(10_000 + 100 * size + index, height, width)
                url = ls.add_image(project, f"train{index:03d}.jpg", scene.jpeg)
                result = [_brush(encode_brush(scene.masks[name]), name, scene.size) for name in CLASSES]
                task_id = ls.add_task(project, {"image": url}, [{"result": result}])
                training[project].append(TaskImage(task_id, url, scene))
        yield ls, images, photos, training


def _brush(rle: list[int], label: str, size: tuple[int, int]) -> dict:
    height, width = size
    return {"id": f"r{label}", "type": "brushlabels", "from_name": "tag", "to_name": "image",
            "original_width": width, "original_height": height, "image_rotation": 0, "origin": "manual",
            "value": {"format": "rle", "rle": rle, "brushlabels": [label]}}


def run_variant(plan: RunPlan, variant: VariantPlan, kind: str, work: Path, ls: Any, images: list[TaskImage],
                photos: list[TaskImage], training: dict[int, list[TaskImage]]) -> dict[str, Any]:
    sizes = variant.training_sizes if kind == "optimized" else variant.baseline_training_sizes
    data_dir = work / f"{variant.name}-{kind}"
    data_dir.mkdir(parents=True, exist_ok=True)
    adapter_version = publish_adapter(data_dir, variant.model, variant.image_size, TRACE_PROJECT, variant.checkpoint)
    trains = bool(sizes) or (kind == "optimized" and bool(variant.clicks_during_training))
    env = backend_env(plan, variant, kind, data_dir, ls.url, ls.legacy_token, worker=trains)
    out: dict[str, Any] = {"variant": variant.name, "model": variant.model, "image_size": variant.image_size,
                           "kind": kind, "note": variant.note, "load_average_before": load_average(),
                           "settings": {k: env.get(k, "default") for k in (
                               "PRECISION", "EMBEDDING_CACHE_MB", "ENCODER_BATCH_SIZE", "SAMLOOP_WORKER_NICE",
                               "SAM_CHECKPOINT", "TRAIN_MAX_SECONDS")},
                           "adapter": adapter_version}
    backend = BackendProcess(env, data_dir / "backend.log")
    log.info("%s %s: starting the backend", variant.name, kind)
    backend.start()
    out["startup_seconds"] = backend.startup_seconds
    try:
        with httpx.Client(timeout=httpx.Timeout(900.0, connect=10.0)) as client:
            health = client.get(backend.url + "/health").json()
            out["backend"] = {k: health.get(k) for k in ("model", "device", "precision", "random_weights",
                                                         "encoder_batch_size")}
            out["backend"]["embedding_cache_mb"] = health["embedding_cache"]["max_bytes"] / MB
            out["preencode"] = _connect(client, backend, kind)
            out["backend"]["click_decoder"] = wait_for_click_decoder(client, backend.url)
            out["idle_rss_mb"] = backend.sampler.current_rss_mb()
            log.info("%s %s: annotator trace", variant.name, kind)
            backend.sampler.phase("trace")
            out["interactive"] = annotator_trace(client, backend.url, TRACE_PROJECT, images, variant.trace, photos)
            log.info("%s %s: batch predictions %s", variant.name, kind, variant.batch_sizes)
            backend.sampler.phase("batch")
            out["batch"] = batch_predictions(client, backend.url, TRACE_PROJECT,
                                             images[variant.trace.images_needed :], variant.batch_sizes)
            largest = max(out["batch"], key=lambda b: b["tasks"])
            out["batch_summary"] = {
                "tasks": largest["tasks"], "images_per_second": largest["images_per_second"],
                "tasks_within_ls_timeout": int(LS_PREDICT_TIMEOUT_S * largest["images_per_second"]),
            }
            out["training"] = []
            runs = [(100 + size, size, False, False) for size in sizes]
            if kind == "optimized" and variant.clicks_during_training:
                size = variant.clicks_during_training
                runs.append((CONCURRENT_PROJECTS + size, size, True, False))
                if variant.renice_worker:
                    runs.append((RENICED_PROJECTS + size, size, True, True))
            for project, size, clicking, renice in runs:
                trained = _train(plan, variant, kind, backend, client, project, size, clicking, renice, images[0],
                                 training)
                if trained is not None:
                    out["training"].append(trained)
    except Exception:
        log.error("%s %s failed; backend log tail:\n%s", variant.name, kind, backend.tail())
        raise
    finally:
        out["memory"] = backend.stop()
        out["load_average_after"] = load_average()
    return out


def _connect(client: httpx.Client, backend: BackendProcess, kind: str) -> dict[str, Any] | None:
    """/setup for the trace project. The optimized backend then encodes the project's tasks ahead
    (its default); this waits for that and reports its cost. The naive baseline has it switched off."""
    extra = {"preencode": False} if kind == "baseline" else None
    client.post(backend.url + "/setup", json=payloads.setup_body(TRACE_PROJECT, extra)).raise_for_status()
    if extra is not None:
        return None
    started = time.monotonic()
    while True:
        progress = client.get(f"{backend.url}/projects/{TRACE_PROJECT}/settings").json()["preencode_progress"] or {}
        if progress.get("state") in ("done", "failed", "off"):
            break
        time.sleep(0.5)
    store = client.get(backend.url + "/health").json().get("embedding_store") or {}
    per_image = store.get("bytes", 0) / max(1, progress.get("newly_encoded", 0))
    return {**progress, "wall_seconds": round(time.monotonic() - started, 1),
            "seconds_per_image": round(progress.get("seconds", 0.0) / max(1, progress.get("total", 0)), 3),
            "store_mb_per_1000_images": round(per_image * 1000 / MB, 1)}


def _train(plan: RunPlan, variant: VariantPlan, kind: str, backend: BackendProcess, client: httpx.Client,
           project: int, size: int, clicking: bool, renice: bool, clicked: TaskImage,
           training: dict[int, list[TaskImage]]) -> dict[str, Any] | None:
    client.post(backend.url + "/setup", json=payloads.setup_body(project)).raise_for_status()
    log.info("%s %s: training on %d labeled images%s%s", variant.name, kind, size,
             " while an annotator clicks" if clicking else "",
             f", worker at nice {COMPARED_NICENESS}" if renice else "")
    default_niceness = None
    if renice:
        try:
            default_niceness = _renice_worker(backend, COMPARED_NICENESS)
        except PermissionError as exc:
            log.error("cannot renice the training worker to %d (%s): skipping that comparison",
                      COMPARED_NICENESS, exc)
            return None
    phase = f"training-{project}"
    backend.sampler.phase(phase)
    clicks = BackgroundClicks(backend.url, TRACE_PROJECT, clicked) if clicking else nullcontext()
    with clicks:
        outcome = training_run(client, backend.url, project, size, backend.log_path, training[project][0],
                               plan.training_timeout)
    if isinstance(clicks, BackgroundClicks):
        outcome.clicks_meanwhile = clicks.summary()
    if clicking:
        outcome.worker_niceness = COMPARED_NICENESS if renice else _worker_niceness(backend)
    if default_niceness is not None:
        _renice_worker(backend, default_niceness)
    backend.sampler.phase(None)
    peaks = backend.sampler.summary()["phase_max_rss_mb"].get(phase, {})
    outcome.worker_peak_rss_mb = max(peaks.get("worker_job", 0.0), peaks.get("worker", 0.0)) or None
    return asdict(outcome)


def _worker_pids(backend: BackendProcess) -> list[int]:
    backend.sampler.sample()
    pids = [pid for pid, seen in backend.sampler.seen.items() if seen.role == "worker"]
    if not pids:
        raise RuntimeError("no training worker process found")
    return pids


def _worker_niceness(backend: BackendProcess) -> int:
    return os.getpriority(os.PRIO_PROCESS, _worker_pids(backend)[0])


def _renice_worker(backend: BackendProcess, niceness: int) -> int:
    """Set the embedded worker's niceness (its forked jobs inherit it); returns the previous value.

    Lowering a niceness needs CAP_SYS_NICE (root); without it the caller skips the comparison.
    """
    pids = _worker_pids(backend)
    previous = os.getpriority(os.PRIO_PROCESS, pids[0])
    for pid in pids:
        os.setpriority(os.PRIO_PROCESS, pid, niceness)
    return previous


def run(plan: RunPlan, work_dir: Path | None = None, keep_work: bool = False, only: list[str] | None = None,
        micro: bool = True, kinds: tuple[str, ...] = ("optimized", "baseline"),
        training: bool = True) -> dict[str, Any]:
    machine = describe()
    started = time.perf_counter()
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="samloop-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    variants = [v for v in plan.variants if not only or v.name in only]
    if not training:
        variants = [VariantPlan(**{**v.__dict__, "training_sizes": [], "baseline_training_sizes": [],
                                   "clicks_during_training": None}) for v in variants]
    if not variants:
        raise ValueError(f"no variant matches {only}; variants: {[v.name for v in plan.variants]}")
    plan = RunPlan(**{**plan.__dict__, "variants": variants})
    results: dict[str, Any] = {"schema": 1, "mode": plan.mode, "machine": machine,
                               "random_weights": all(v.checkpoint == "random" for v in variants),
                               "plan": {"image": f"{plan.image_hw[1]}x{plan.image_hw[0]} JPEG",
                                        "train_max_seconds": plan.train_max_seconds, "extra_env": plan.extra_env,
                                        "variants": [asdict(v) | {"name": v.name} for v in variants]},
                               "runs": [], "failures": []}
    try:
        with label_studio(plan) as (ls, images, photos, trained):
            for variant in variants:
                for kind in kinds:
                    try:
                        results["runs"].append(run_variant(plan, variant, kind, work, ls, images, photos, trained))
                    except Exception as exc:  # one broken variant must not cost the whole run's results
                        log.exception("%s %s failed", variant.name, kind)
                        results["failures"].append({"variant": variant.name, "kind": kind,
                                                    "error": f"{type(exc).__name__}: {exc}"[:2000]})
        if micro:
            log.info("hot-spot micro-benchmarks")
            results["hotspots"] = {
                "rle": hotspots.rle_encoders(*plan.rle_hw, repeats=plan.micro_repeats),
                "precision": hotspots.precision("vit_t", plan.micro_size, plan.micro_repeats,
                                                plan.micro_encoder_repeats, plan.image_hw),
            }
    finally:
        if not keep_work:
            shutil.rmtree(work, ignore_errors=True)
    results["load_average_at_end"] = load_average()
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    return results
