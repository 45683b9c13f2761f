"""Clicks through the torch.compile'd mask decoder: the eager decoder's masks, no recompiles after the
warm-up (not for other prompts, image sizes or adapter versions), and eager answers when compiling cannot."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from training.inference import runtime
from training.inference.compiled_decoder import CompiledDecoder
from training.inference.predictor import Predictor
from training.model.config import AdapterConfig
from training.model.features import ImageFeatures
from training.model.loading import new_adapter_model

SIZE = 128  # model input: a 8 x 8 embedding grid keeps Inductor's compile short
THREADS = 2  # one thread count: one graph per decoder architecture
# (original image size, prompt): points in (x, y) pixels of the original image.
PROMPTS = {
    "one point": {"points": [[30.0, 40.0]]},
    "negative points": {"points": [[30.0, 40.0], [70.0, 20.0], [10.0, 80.0]], "point_labels": [1, 0, 0]},
    "box": {"box": [10.0, 15.0, 90.0, 70.0]},
    "box and point": {"box": [10.0, 15.0, 90.0, 70.0], "points": [[50.0, 40.0]]},
}
IMAGE_SIZES = [(100, 120), (128, 128), (90, 60)]
MIN_IOU = 0.999
REPO = Path(__file__).resolve().parents[3]


def _perturb_lora(model, seed: int) -> None:
    """Give the adapter's decoder LoRA weights of its own (fresh ones are zero: SAM's decoder)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.sam.mask_decoder.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
        model.class_prompts.copy_(torch.randn(model.class_prompts.shape, generator=generator))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="module")
def compiled_setup(random_vit_t, tmp_path_factory):
    """A model with a LoRA decoder, an eager predictor and a compiled one on separate copies (the
    base decoder's projection reuse keeps per-model state), compiled once for the module."""
    model = new_adapter_model(random_vit_t, SIZE, ["cat", "dog"], AdapterConfig.for_kind("decoder"))
    twin = new_adapter_model(random_vit_t, SIZE, ["cat", "dog"], AdapterConfig.for_kind("decoder"))
    for m in (model, twin):
        _perturb_lora(m, seed=1)
    compiled = CompiledDecoder(cache_dir=tmp_path_factory.mktemp("inductor"))
    eager = Predictor(model, precision="fp32", threads=THREADS)
    fast = Predictor(twin, precision="fp32", threads=THREADS, compiled=compiled)
    assert compiled.warm(fast.warm_compiled_clicks), compiled.reason
    return model, twin, eager, fast, compiled


def _embeddings(eager: Predictor, seed: int):
    rng = np.random.default_rng(seed)
    return [eager.embed([rng.integers(0, 255, (*hw, 3), dtype=np.uint8)])[0] for hw in IMAGE_SIZES]


def test_compiled_clicks_give_the_eager_masks_without_compiling_again(compiled_setup):
    _, _, eager, fast, compiled = compiled_setup
    warmed = compiled.compiles
    assert compiled.path == "compiled" and warmed == 2  # SAM's decoder and the LoRA one
    for embedding in _embeddings(eager, seed=0):
        for name, prompt in PROMPTS.items():
            for decoder in ("base", "adapter"):
                for class_name in (None, "cat") if decoder == "adapter" else (None,):
                    args = {k: np.asarray(v) for k, v in prompt.items()}
                    want = eager.predict_prompt(embedding, decoder=decoder, class_name=class_name, **args)
                    got = fast.predict_prompt(embedding, decoder=decoder, class_name=class_name, **args)
                    assert want.mask.any(), (name, decoder)
                    assert _iou(want.mask, got.mask) >= MIN_IOU, (name, decoder, class_name, embedding.original_size)
                    assert got.score == pytest.approx(want.score, abs=1e-3)
    assert compiled.compiles == warmed  # other prompt counts, boxes, class tokens and image sizes: no recompile


def test_mask_feedback_gives_the_eager_masks(compiled_setup):
    _, twin, _, fast, compiled = compiled_setup
    encoder = twin.sam.prompt_encoder
    grid = encoder.image_embedding_size
    generator = torch.Generator().manual_seed(5)
    embedding = torch.randn(1, 256, *grid, generator=generator)
    previous = torch.randn(1, 1, 4 * grid[0], 4 * grid[1], generator=generator)  # last click's logits
    with runtime.intra_op_threads(THREADS), torch.inference_mode():
        points = (torch.tensor([[[40.0, 50.0], [90.0, 30.0]]]), torch.tensor([[1, 0]]))
        sparse, dense = encoder(points=points, boxes=None, masks=previous)
        for decoder in (twin.sam.mask_decoder, fast._base_twin):
            args = (decoder, ImageFeatures(embedding), encoder.get_dense_pe(), sparse, dense, False)
            want, want_iou = twin.family.decode(*args)
            got, got_iou = compiled(twin.family, *args)
            assert _iou((want > 0).numpy(), (got > 0).numpy()) >= MIN_IOU
            assert torch.allclose(want_iou, got_iou, atol=1e-4)


def test_a_new_adapter_version_runs_without_compiling_again(compiled_setup, random_vit_t):
    model, twin, eager, fast, compiled = compiled_setup
    warmed = compiled.compiles
    embedding = _embeddings(eager, seed=3)[0]
    points = np.array([[20.0, 30.0], [60.0, 50.0]])
    before = fast.predict_prompt(embedding, points=points, decoder="adapter").mask
    version = new_adapter_model(random_vit_t, SIZE, ["cat", "dog"], AdapterConfig.for_kind("decoder"))
    _perturb_lora(version, seed=2)
    for m in (model, twin):  # what ModelService does with a new version: its tensors copied into the live model
        m.load_adapter_state(version.adapter_state())
    want = eager.predict_prompt(embedding, points=points, decoder="adapter").mask
    got = fast.predict_prompt(embedding, points=points, decoder="adapter").mask
    assert _iou(before, want) < MIN_IOU  # the new weights change the mask ...
    assert _iou(want, got) >= MIN_IOU  # ... and the compiled decoder runs them
    assert compiled.compiles == warmed


def test_another_copy_of_sams_decoder_shares_its_graph(compiled_setup, random_vit_t):
    # Another adapter kind's live model brings its own copy of SAM's decoder: same weights, no new compile.
    _, _, eager, fast, compiled = compiled_setup
    warmed = compiled.compiles
    other = new_adapter_model(random_vit_t, SIZE, ["cat"], AdapterConfig.for_kind("decoder"))
    second = Predictor(other, precision="fp32", threads=THREADS, compiled=compiled)
    assert second._base_twin is fast._base_twin
    embedding = _embeddings(eager, seed=4)[1]
    points = np.array([[20.0, 30.0], [60.0, 50.0]])
    want = eager.predict_prompt(embedding, points=points, decoder="base").mask
    assert _iou(want, second.predict_prompt(embedding, points=points, decoder="base").mask) >= MIN_IOU
    assert compiled.compiles == warmed


def test_a_fixed_decoder_runs_with_its_weights_folded_in(compiled_setup):
    """The weights of a ``fixed`` decoder are constants of its graph (what makes it faster): changing
    them afterwards reaches the eager decoder, not the compiled one. A decoder passed as an argument (the
    adapter's) takes new weights: ``test_a_new_adapter_version_runs_without_compiling_again``. The module's
    fixed decoder (SAM's, compiled in ``compiled_setup``) serves: its weight is flipped here and put back."""
    _, twin, _, fast, compiled = compiled_setup
    warmed, decoder, encoder = compiled.compiles, fast._base_twin, twin.sam.prompt_encoder
    weight = decoder.output_hypernetworks_mlps[0].layers[-1].weight
    generator = torch.Generator().manual_seed(8)
    embedding = torch.randn(1, 256, *encoder.image_embedding_size, generator=generator)
    with runtime.intra_op_threads(THREADS), torch.inference_mode():
        points = (torch.tensor([[[40.0, 50.0]]]), torch.tensor([[1]]))
        sparse, dense = encoder(points=points, boxes=None, masks=None)
        args = (decoder, ImageFeatures(embedding), encoder.get_dense_pe(), sparse, dense, False)
        before, _ = compiled(twin.family, *args)
        assert torch.allclose(before, twin.family.decode(*args)[0], atol=1e-4)
        weight.mul_(-1.0)
        try:
            flipped, _ = twin.family.decode(*args)
            after, _ = compiled(twin.family, *args)
        finally:
            weight.mul_(-1.0)
    other = copy.deepcopy(decoder)
    with torch.no_grad():
        other.output_hypernetworks_mlps[0].layers[-1].weight.mul_(-1.0)
    assert _iou((before > 0).numpy(), (flipped > 0).numpy()) < 0.5  # the eager decoder sees the new weights
    assert torch.equal(after, before)  # the compiled graph holds the weights it was compiled with
    assert compiled.compiles == warmed
    assert compiled.fixed(copy.deepcopy(decoder)) is decoder  # equal weights share its graph ...
    assert compiled.fixed(other) is other  # ... other weights get a graph of their own


def test_without_a_cpp_compiler_clicks_stay_eager_and_say_why(monkeypatch, random_vit_t, tmp_path, caplog):
    from torch._inductor import cpp_builder, exc

    # Inductor's compiler search, as it ends on a machine without one (its config is not patched: it is
    # per thread here, and undoing a patch of it broke later compiles in other threads).
    def no_compiler() -> str:
        raise exc.InvalidCxxCompiler

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    model = new_adapter_model(random_vit_t, SIZE, ["cat"], AdapterConfig.for_kind("decoder"))
    compiled = CompiledDecoder(cache_dir=tmp_path / "inductor")
    predictor = Predictor(model, precision="fp32", threads=THREADS, compiled=compiled)
    with caplog.at_level(logging.WARNING):
        assert not compiled.warm(predictor.warm_compiled_clicks)
    assert compiled.path == "eager" and "C++ compiler" in compiled.reason
    assert len([r for r in caplog.records if "eager mask decoder" in r.getMessage()]) == 1
    (embedding,) = predictor.embed([np.zeros((64, 64, 3), np.uint8)])
    assert predictor.predict_prompt(embedding, points=np.array([[10.0, 10.0]])).mask.shape == (64, 64)
    assert compiled.compiles == 0


def test_clicks_are_eager_until_the_background_warm_up_ends(random_vit_t):
    model = new_adapter_model(random_vit_t, SIZE, ["cat"], AdapterConfig.for_kind("decoder"))
    compiled = CompiledDecoder(backend="eager")  # dynamo only: counts graphs without a C++ compile
    predictor = Predictor(model, precision="fp32", threads=THREADS, compiled=compiled)
    release = threading.Event()

    def warm() -> None:
        release.wait(30)
        predictor.warm_compiled_clicks()

    thread = compiled.start(warm)
    (embedding,) = predictor.embed([np.zeros((64, 64, 3), np.uint8)])
    predictor.predict_prompt(embedding, points=np.array([[10.0, 10.0]]))
    assert compiled.path == "eager" and compiled.reason == "warming up" and compiled.compiles == 0
    release.set()
    thread.join(60)
    assert compiled.path == "compiled" and compiled.compiles == 2


def test_switched_off_it_never_compiles():
    compiled = CompiledDecoder(enabled=False)
    assert compiled.start(lambda: None) is None
    assert compiled.describe()["path"] == "eager" and compiled.reason == "COMPILE_DECODER=false"


def test_thread_counts_are_rounded_to_the_warmed_steps():
    assert runtime.thread_steps(1) == (1,)
    assert runtime.thread_steps(2) == (1, 2)
    assert runtime.thread_steps(12) == (1, 2, 4, 8, 12)
    assert [runtime.round_down(n, (1, 2, 4, 8, 12)) for n in (1, 3, 7, 11, 12)] == [1, 2, 4, 8, 12]


def test_warming_up_beside_bf16_encoding_does_not_deadlock(random_vit_t):
    # Autocast's weight-cast cache once deadlocked the warm-up (dynamo tracing LoRA casts under its mutex)
    # against a request thread leaving autocast (clearing the cache under that mutex, holding the GIL).
    model = new_adapter_model(random_vit_t, SIZE, ["cat"], AdapterConfig.for_kind("decoder"))
    compiled = CompiledDecoder(backend="eager")
    predictor = Predictor(model, precision="bf16", threads=THREADS, compiled=compiled)
    image = np.zeros((100, 128, 3), np.uint8)
    stop = threading.Event()

    def encode() -> None:
        while not stop.is_set():
            predictor.embed([image])

    encoder = threading.Thread(target=encode, daemon=True)
    encoder.start()
    warm = compiled.start(predictor.warm_compiled_clicks)
    warm.join(120)
    stop.set()
    encoder.join(60)
    assert not warm.is_alive() and not encoder.is_alive()
    assert compiled.path == "compiled"


def test_inductors_placeholder_trace_happens_before_the_warm_up_thread_starts():
    # That trace swaps nn.Module.__call__ process-wide for a moment; an image encoded meanwhile in another
    # thread failed. start() does it in the caller, before any other thread runs the model. A fresh process:
    # in this one an earlier test may have traced it already.
    script = (
        "from torch._inductor.loop_body import InterpreterShim\n"
        "from training.inference.compiled_decoder import CompiledDecoder\n"
        "before = InterpreterShim._dummy_gm.cache_info().currsize\n"
        "CompiledDecoder().start(lambda: None).join(60)\n"
        "print(before, InterpreterShim._dummy_gm.cache_info().currsize)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "1"]
