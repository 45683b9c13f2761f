"""SAM 2.1's clicks through the compiled mask decoder: the eager decoder's masks (points, boxes, negative points,
a fed-back mask, class tokens, several image sizes), its high-resolution maps whatever their layout, and no
recompile after the warm-up, not for a new adapter version either."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.training.inference.test_compiled_decoder import MIN_IOU, PROMPTS, THREADS, _iou, _perturb_lora
from training.inference.compiled_decoder import CompiledDecoder
from training.inference.predictor import Predictor
from training.model.config import AdapterConfig
from training.model.loading import new_adapter_model
from training.model.weights import resolve_checkpoint

SAM2 = "sam2.1_hiera_t"
SIZE = 64  # the smallest multiple of Hiera's 32: a 4 x 4 embedding grid, 16 x 16 and 8 x 8 finer maps
IMAGE_SIZES = [(100, 120), (70, 50)]  # stretched to the square input: other sizes, the same graph


@pytest.fixture(scope="module")
def sam2_setup(tmp_path_factory):
    """As ``test_compiled_decoder.compiled_setup``, on SAM 2.1: the compiled predictor's encoder runs
    channels-last (as the backend's does), the eager one's not, so the maps reach the decoder in both layouts."""
    weights = resolve_checkpoint(SAM2, "random")
    model, twin = (new_adapter_model(weights, SIZE, ["cat", "dog"], AdapterConfig.for_kind("decoder"))
                   for _ in range(2))
    for m in (model, twin):
        _perturb_lora(m, seed=1)
    compiled = CompiledDecoder(cache_dir=tmp_path_factory.mktemp("inductor"))
    eager = Predictor(model, precision="fp32", threads=THREADS)
    fast = Predictor(twin, precision="fp32", threads=THREADS, compiled=compiled, channels_last=True)
    assert compiled.warm(fast.warm_compiled_clicks), compiled.reason
    return model, twin, eager, fast, compiled


def _images(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (*hw, 3), dtype=np.uint8) for hw in IMAGE_SIZES]


def _embed(setup, image: np.ndarray) -> list:
    """``image``'s features from the eager predictor and from the compiled one (its encoder channels-last)."""
    return [predictor.embed([image])[0] for predictor in setup[2:4]]


def _both(setup, features: list, **prompt) -> list:
    """The eager predictor's and the compiled one's answer to the same prompt."""
    return [p.predict_prompt(f, **prompt) for p, f in zip(setup[2:4], features, strict=True)]


def _same(want, got, label) -> None:
    assert _iou(want.mask, got.mask) >= MIN_IOU, label
    assert got.score == pytest.approx(want.score, abs=1e-3), label
    assert torch.allclose(want.low_res, got.low_res, atol=1e-3), label


def test_compiled_sam2_clicks_give_the_eager_masks_without_compiling_again(sam2_setup):
    compiled = sam2_setup[4]
    warmed = compiled.compiles
    assert compiled.path == "compiled" and warmed == 2  # SAM 2.1's decoder and the LoRA one
    masked = 0
    for image in _images(seed=0):
        features = _embed(sam2_setup, image)
        for name, prompt in PROMPTS.items():
            for decoder, class_name in (("base", None), ("adapter", None), ("adapter", "cat")):
                args = {k: np.asarray(v) for k, v in prompt.items()}
                want, got = _both(sam2_setup, features, decoder=decoder, class_name=class_name, **args)
                _same(want, got, (name, decoder, class_name, image.shape))
                masked += bool(want.mask.any())
    assert masked >= 12  # of 24: the masks compared are not all empty
    assert compiled.compiles == warmed


def test_a_click_sequence_feeds_back_the_same_masks(sam2_setup):
    # SAM 2 feeds each click's mask back into the next (the predictor's click memory): compiled as eager.
    compiled = sam2_setup[4]
    warmed = compiled.compiles
    points, labels = np.array([[30.0, 40.0], [80.0, 60.0], [50.0, 20.0]]), np.array([1, 0, 1])
    for decoder in ("base", "adapter"):
        features = _embed(sam2_setup, _images(seed=1)[0])  # the click memory keys on the features object
        for count in range(1, len(points) + 1):
            want, got = _both(sam2_setup, features, points=points[:count], point_labels=labels[:count],
                              decoder=decoder)
            _same(want, got, (decoder, count))
        # The same previous mask given to both: the mask prompt alone, without the memories' own masks.
        previous = torch.randn(1, SIZE // 4, SIZE // 4, generator=torch.Generator().manual_seed(3)) * 4
        want, got = _both(sam2_setup, features, points=points, point_labels=labels, decoder=decoder,
                          mask_input=previous)
        _same(want, got, (decoder, "mask prompt"))
    assert compiled.compiles == warmed


def test_a_new_sam2_adapter_version_runs_without_compiling_again(sam2_setup):
    model, twin, _, fast, compiled = sam2_setup
    warmed = compiled.compiles
    features = _embed(sam2_setup, _images(seed=2)[0])
    prompt = {"points": np.array([[20.0, 30.0], [60.0, 50.0]]), "point_labels": np.array([1, 0]),
              "decoder": "adapter", "class_name": "cat"}
    before = fast.predict_prompt(features[1], **prompt)
    version = new_adapter_model(resolve_checkpoint(SAM2, "random"), SIZE, ["cat", "dog"],
                                AdapterConfig.for_kind("decoder"))
    _perturb_lora(version, seed=2)
    for m in (model, twin):  # what ModelService does with a new version: its tensors copied into the live model
        m.load_adapter_state(version.adapter_state())
    want, got = _both(sam2_setup, features, **prompt)
    assert not torch.allclose(before.low_res, want.low_res, atol=1e-2)  # the new weights change the logits ...
    _same(want, got, "new version")  # ... and the compiled decoder runs them
    assert compiled.compiles == warmed
