"""Micro-benchmarks of the hot spots found by profiling, before/after each fix, in this process.

- RLE: Label Studio SDK's ``mask2rle`` (pure Python, per run) vs ``backend.regions.encode_brush``
  (vectorised numpy, byte-identical output), on a speckled mask (what a random or uncertain model
  gives), a compact one and an empty one, at 1024 x 1024 in the full run.
- Precision and layout: encoder (NCHW and channels-last), one click and the 4-class decode under
  bf16 autocast vs fp32, the decoder also with one intra-op thread.
- JSON: bytes and serialisation time of a click's answer (stdlib ``json`` and the backend's pydantic).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.scenes import CLASSES, make_scene


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return round(float(np.median(times)) * 1000.0, 2)


def speckled_mask(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A blob with salt-and-pepper noise around it: a low-confidence model's mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    blob = (yy - height / 2) ** 2 / (height / 4) ** 2 + (xx - width / 2) ** 2 / (width / 4) ** 2 < 1
    noise = rng.random((height, width)) < 0.1
    return blob ^ noise


def run_count(mask: np.ndarray) -> int:
    """Runs of equal pixels in row-major order: what the brush RLE's cost and size follow."""
    flat = mask.reshape(-1)
    return int(np.count_nonzero(flat[1:] != flat[:-1])) + 1


def answer_json_ms(rle: list[int], repeats: int) -> float:
    """Serialising ``{"rle": rle}`` as /predict does (pydantic, as FastAPI serialises a ``dict``)."""
    from pydantic import TypeAdapter

    answer = TypeAdapter(dict)
    return median_ms(lambda: answer.dump_json({"rle": rle}), repeats)


def rle_encoders(height: int, width: int, repeats: int) -> dict[str, Any]:
    """Label Studio SDK's ``mask2rle`` vs ``encode_brush`` and the answer's JSON, per mask kind.

    Speckled (a random or unsure model), compact (a trained model) and empty: the encoder's cost
    follows the number of runs, so ``runs`` is recorded beside each time.
    """
    from label_studio_sdk.converter.brush import mask2rle

    from backend.regions import encode_brush

    masks = {"speckled": speckled_mask(height, width), "compact": make_scene(1, height, width).masks["a"],
             "empty": np.zeros((height, width), bool)}
    out: dict[str, Any] = {"image": f"{width}x{height}"}
    for name, mask in masks.items():
        alpha = np.where(mask, np.uint8(255), np.uint8(0))
        sdk = mask2rle(alpha)
        ours = encode_brush(mask)
        sdk_ms = median_ms(lambda a=alpha: mask2rle(a), repeats)
        ours_ms = median_ms(lambda m=mask: encode_brush(m), repeats)
        json_text = json.dumps({"rle": ours})
        out[name] = {"runs": run_count(mask),
                     "sdk_mask2rle_ms": sdk_ms, "encode_brush_ms": ours_ms,
                     "speedup": round(sdk_ms / max(ours_ms, 1e-3), 1), "identical": sdk == ours,
                     "rle_bytes": len(ours), "json_bytes": len(json_text),
                     "json_dumps_ms": median_ms(lambda r=ours: json.dumps({"rle": r}), repeats),
                     "answer_json_ms": answer_json_ms(ours, repeats)}
    return out


def _five_clicks(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Five (x, y) points spread over ``mask``, alternately positive and negative."""
    ys, xs = np.nonzero(mask)
    points = np.stack([xs[:: max(1, len(xs) // 5)][:5], ys[:: max(1, len(ys) // 5)][:5]], axis=1).astype(np.float32)
    return points, np.array([1, 0, 1, 0, 1])


def precision(model_type: str, image_size: int, repeats: int, encoder_repeats: int,
              image_hw: tuple[int, int] = (960, 1280)) -> dict[str, Any]:
    """Encoder / click / 4-class decode timings under fp32 and bf16 autocast (vit_t, random weights)."""
    import torch

    from training.inference.predictor import Predictor
    from training.inference.runtime import intra_op_threads
    from training.model.loading import new_adapter_model
    from training.model.weights import resolve_checkpoint

    weights = resolve_checkpoint(model_type, "random", None)
    model = new_adapter_model(weights, image_size, list(CLASSES)).eval()
    scene = make_scene(3, *image_hw)
    image = scene.image
    h, w = image.shape[:2]
    points, labels = _five_clicks(scene.masks["a"])
    out: dict[str, Any] = {"model": model_type, "image_size": image_size, "image": f"{w}x{h}"}
    fp32 = Predictor(model, precision="fp32")
    embedding = fp32.embed([image])[0]
    batch = torch.stack([model.preprocess(image)[0]])
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):

        def autocast(dtype: torch.dtype | None = dtype) -> torch.autocast:
            return torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None)

        def encode(autocast: Callable = autocast, channels_last: bool = False) -> None:
            layout = torch.channels_last if channels_last else torch.contiguous_format
            model.sam.image_encoder.to(memory_format=layout)
            with torch.inference_mode(), autocast():
                model.encode(batch.contiguous(memory_format=layout))

        def click(n: int, autocast: Callable = autocast) -> None:
            coords = torch.from_numpy(points[:n] * (embedding.input_size[1] / w))[None]
            with torch.inference_mode():
                with autocast():
                    low, iou = model.prompt_logits(embedding.features, coords, torch.from_numpy(labels[:n])[None],
                                                   None, [0], multimask=n == 1)
                logits = model.upscale(low[0, :1, None].float(), embedding.input_size, (h, w))
                (logits[0] > 0).numpy()

        def classes(autocast: Callable = autocast) -> None:
            with torch.inference_mode():
                with autocast():
                    low, iou = model.class_logits(embedding.features, list(range(len(CLASSES))))
                probs = torch.sigmoid(model.upscale(low.float(), embedding.input_size, (h, w)))
                probs.max(dim=0)

        out[name] = {"encoder_ms": median_ms(encode, encoder_repeats),
                     "encoder_channels_last_ms": median_ms(lambda e=encode: e(channels_last=True), encoder_repeats),
                     "click_1_point_ms": median_ms(lambda c=click: c(1), repeats),
                     "click_5_points_ms": median_ms(lambda c=click: c(5), repeats),
                     "classes_4_ms": median_ms(classes, repeats)}
        with intra_op_threads(1):
            out[name] |= {"click_1_point_1_thread_ms": median_ms(lambda c=click: c(1), repeats),
                          "classes_4_1_thread_ms": median_ms(classes, repeats)}
    model.sam.image_encoder.to(memory_format=torch.contiguous_format)
    out["threads"] = torch.get_num_threads()
    return out
