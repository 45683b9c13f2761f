"""The mask decoder alone, eager vs ``torch.compile``, fp32 and bf16 autocast (``python -m benchmarks decoder``).

Per base model (random weights, 1024 px by default): SAM's own decoder as clicks run it (compiled with its
weights folded in: ``CompiledDecoder.fixed``) on a real image's features, p50 / p95 of 30 calls of one click
(1 point, three candidates) and of three points (one mask: SAM 2.1's stability pick included), at a fixed
intra-op thread count. bf16 on a CPU without avx512_bf16 is emulated: the machine block says which it was.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.click_path import percentiles
from benchmarks.scenes import make_scene

MODELS = ("vit_t", "sam2.1_hiera_t")


def _inputs(model_type: str, image_size: int) -> tuple[Any, Any, Any, dict[str, tuple]]:
    """(family, SAM's decoder, the image's fp32 features, name -> (image_pe, sparse, dense, multimask))."""
    import torch

    from training.model.base_models import base_model, build_sam

    family, sam = base_model(model_type).family, build_sam(model_type, image_size)
    image = make_scene(3, image_size * 3 // 4, image_size).image
    pixels = torch.from_numpy(image).permute(2, 0, 1).float()
    batch = torch.nn.functional.interpolate(((pixels - sam.pixel_mean) / sam.pixel_std)[None],
                                            size=(image_size, image_size), mode="bilinear")
    with torch.inference_mode():
        features = family.encode(sam, batch)
        image_pe = sam.prompt_encoder.get_dense_pe()
        prompts = {}
        for name, count, multimask in (("1_point", 1, True), ("3_points", 3, False)):
            coords = torch.tensor([[[0.4, 0.5], [0.7, 0.3], [0.2, 0.8]][:count]]) * image_size
            labels = torch.tensor([[1, 0, 1][:count]])
            prompts[name] = (image_pe, *family.prompts(sam, coords, labels, None, None), multimask)
    return family, sam.mask_decoder, features, prompts


def _one_model(model_type: str, image_size: int, threads: int, repeats: int, cache_dir: Path) -> dict[str, Any]:
    import torch

    from training.inference.compiled_decoder import CompiledDecoder
    from training.inference.runtime import intra_op_threads

    family, decoder, features, prompts = _inputs(model_type, image_size)
    out: dict[str, Any] = {}
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        # A CompiledDecoder per precision: autocast is part of the graph (dynamo guards on it).
        compiled = CompiledDecoder(cache_dir=cache_dir)
        fixed = compiled.fixed(copy.deepcopy(decoder))
        calls = {"eager": lambda args: family.decode(decoder, features, *args),
                 "compiled": lambda args, c=compiled, f=fixed: c(family, f, features, *args)}

        def settings(dtype: torch.dtype | None = dtype) -> contextlib.ExitStack:
            # Thread-local, so entered by the warm-up thread and by this one alike.
            stack = contextlib.ExitStack()
            stack.enter_context(intra_op_threads(threads))
            stack.enter_context(torch.inference_mode())
            stack.enter_context(torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None,
                                               cache_enabled=False))
            return stack

        def warm(settings: Callable = settings, call: Callable = calls["compiled"]) -> None:
            with settings():
                for args in prompts.values():
                    call(args)

        started = time.perf_counter()
        # In a thread of its own, as the backend does: warming lowers its thread's priority.
        compiled.start(warm).join()
        if not compiled.ready:
            raise RuntimeError(f"the decoder did not compile: {compiled.reason}")
        row: dict[str, Any] = {"compile_s": round(time.perf_counter() - started, 1), "graphs": compiled.compiles}
        with settings():
            for path, call in calls.items():
                for name, args in prompts.items():
                    row[f"{path}_{name}_ms"] = percentiles(lambda c=call, a=args: c(a), repeats)
        out[precision] = row
    return out


def decoder_alone(models: tuple[str, ...] = MODELS, image_size: int = 1024, threads: int = 2,
                  repeats: int = 30, cache_dir: Path | None = None) -> dict[str, Any]:
    """model -> precision -> eager and compiled p50 / p95 (ms) of the decoder alone, plus the machine."""
    from benchmarks.machine import describe

    cache = cache_dir or Path(tempfile.mkdtemp(prefix="samloop-inductor-"))
    out: dict[str, Any] = {"machine": describe(), "image_size": image_size, "threads": threads,
                           "repeats": repeats, "models": {}}
    for model_type in models:
        out["models"][model_type] = _one_model(model_type, image_size, threads, repeats, cache)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks decoder", description=__doc__)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--size", type=int, default=1024, help="model input size (px)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = parser.parse_args(argv)
    result = decoder_alone(tuple(args.models), args.size, args.threads, args.repeats)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0
