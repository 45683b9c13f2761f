"""Where a warm click's milliseconds go, stage by stage, in this process (``python -m benchmarks clickpath``).

The stages the backend runs for an interactive /predict whose embedding is cached: parsing the body
(with and without 100 drafted regions in the context), the decoder (eager and compiled), upscaling the
chosen mask to the image, the brush RLE (on the model's mask, on a speckled one and on a compact one),
and serialising the answer. Random weights: the model's masks are speckled, as in the HTTP benchmark.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import payloads
from benchmarks.hotspots import answer_json_ms, median_ms, run_count, speckled_mask
from benchmarks.scenes import CLASSES, make_scene


def percentiles(fn, repeats: int) -> dict[str, float]:
    """p50 and p95 (ms) of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000.0)
    return {"p50": round(float(np.percentile(times, 50)), 2), "p95": round(float(np.percentile(times, 95)), 2)}


def _predictors(image_size: int, cache_dir: Path) -> tuple[Any, Any, Any]:
    from training.inference.compiled_decoder import CompiledDecoder
    from training.inference.predictor import Predictor
    from training.model.loading import new_adapter_model
    from training.model.weights import resolve_checkpoint

    weights = resolve_checkpoint("vit_t", "random", None)
    models = [new_adapter_model(weights, image_size, list(CLASSES)).eval() for _ in range(2)]
    compiled = CompiledDecoder(cache_dir=cache_dir)
    # As the backend builds them: precision auto, channels-last encoder, threads capped to free cores.
    eager = Predictor(models[0], channels_last=True, threads="free", clicks="base")
    fast = Predictor(models[1], channels_last=True, threads="free", clicks="base", compiled=compiled)
    if not compiled.warm(fast.warm_compiled_clicks):
        raise RuntimeError(f"the decoder did not compile: {compiled.reason}")
    return eager, fast, compiled


def _body_stages(image_hw: tuple[int, int], repeats: int) -> dict[str, Any]:
    from backend.prompts import parse_context
    from backend.schemas import PredictRequest

    scene = make_scene(7, *image_hw)
    points = [(0.3, 0.4, True), (0.6, 0.5, False), (0.5, 0.2, True)]
    context = payloads.click_context([(100 * x, 100 * y, p) for x, y, p in points], CLASSES[0], scene.size)
    drafted = {"result": context["result"] + payloads.drafted_regions(100, scene.size)}
    task = payloads.task(1, "/data/upload/1/img.jpg", 1)
    out: dict[str, Any] = {}
    for name, ctx in (("plain", context), ("drafted_100", drafted)):
        raw = json.dumps(payloads.predict_body(1, [task], ctx)).encode()

        def parse(raw: bytes = raw) -> None:
            request = PredictRequest.model_validate_json(raw)
            parse_context(request.context, max_points=100)

        out[name] = {"request_kb": round(len(raw) / 1024, 1), "parse_ms": median_ms(parse, repeats)}
    return out


def _rle_stages(mask: np.ndarray, repeats: int) -> dict[str, Any]:
    from backend.regions import encode_brush

    height, width = mask.shape
    compact = make_scene(1, height, width).masks["a"]
    out = {}
    for name, m in (("model_mask", mask), ("speckled", speckled_mask(height, width)), ("compact", compact)):
        rle = encode_brush(m)
        out[name] = {"runs": run_count(m), "encode_brush_ms": median_ms(lambda m=m: encode_brush(m), repeats),
                     "rle_bytes": len(rle), "json_dumps_ms": median_ms(lambda r=rle: json.dumps({"rle": r}), repeats),
                     "answer_json_ms": answer_json_ms(rle, repeats)}
    return out


def click_path(image_size: int = 1024, image_hw: tuple[int, int] = (768, 1024), repeats: int = 30,
               cache_dir: Path | None = None) -> dict[str, Any]:
    """Per-stage medians (ms) of a warm click at ``image_size`` on an ``image_hw`` image."""
    import torch

    cache = cache_dir or Path(tempfile.mkdtemp(prefix="samloop-inductor-"))
    eager, fast, compiled = _predictors(image_size, cache)
    image = make_scene(3, *image_hw).image
    embedding = eager.embed([image])[0]
    height, width = image_hw
    one = np.array([[0.4 * width, 0.5 * height]])
    three = np.array([[0.4 * width, 0.5 * height], [0.7 * width, 0.3 * height], [0.2 * width, 0.8 * height]])
    labels = np.array([1, 0, 1])
    out: dict[str, Any] = {"image_size": image_size, "image": f"{width}x{height}", "precision":
                           "bf16" if eager.autocast == torch.bfloat16 else "fp32", "threads": eager.max_threads,
                           "compile": compiled.describe()}
    for name, predictor in (("eager", eager), ("compiled", fast)):
        out[f"{name}_1_point_ms"] = percentiles(lambda p=predictor: p.predict_prompt(embedding, points=one), repeats)
        out[f"{name}_3_points_ms"] = percentiles(
            lambda p=predictor: p.predict_prompt(embedding, points=three, point_labels=labels), repeats)
    low_res = torch.randn(1, 1, image_size // 4, image_size // 4)
    model = fast.model

    def upscale() -> np.ndarray:
        with torch.inference_mode():
            logits = model.upscale(low_res, embedding.input_size, image_hw)
            return (logits[0] > 0).cpu().numpy()

    out["upscale_threshold_ms"] = median_ms(upscale, repeats)
    out["rle"] = _rle_stages(fast.predict_prompt(embedding, points=three, point_labels=labels).mask, repeats)
    out["body"] = _body_stages(image_hw, repeats)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks clickpath", description=__doc__)
    parser.add_argument("--size", type=int, default=1024, help="model input size (px)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    result = click_path(args.size, repeats=args.repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0
