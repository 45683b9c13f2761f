"""Clicks on one image reuse the image-only projections of SAM's decoder, with identical masks."""

from __future__ import annotations

import pytest
import torch

from training.inference.predictor import Predictor
from training.inference.projection_cache import cache_image_projections, decoding
from training.model.config import AdapterConfig
from training.model.loading import new_adapter_model

SIZE = 256
CLICKS = [([[30.0, 40.0]], [1]), ([[30.0, 40.0], [90.0, 20.0]], [1, 0]), ([[120.0, 100.0]], [1])]


@pytest.fixture
def model(random_vit_t):
    return new_adapter_model(random_vit_t, SIZE, ["a"], AdapterConfig.for_kind("decoder"))


def _count_computations(model) -> list[int]:
    calls = [0]
    for linear in model.family.image_only_projections(model.base_mask_decoder):
        plain = linear.forward

        def counted(x, plain=plain):
            calls[0] += 1
            return plain(x)

        linear.forward = counted
    return calls


def _decode(model, embedding, points, labels):
    with torch.inference_mode():
        return model.prompt_logits(embedding, torch.tensor([points]), torch.tensor([labels]), None, [None],
                                   multimask=len(points) == 1, base_decoder=True)


def test_cached_decodes_equal_plain_ones_and_compute_the_projections_once_per_image(model):
    calls = _count_computations(model)
    cache_image_projections(model.base_mask_decoder)
    image, other = torch.randn(1, 256, 16, 16), torch.randn(1, 256, 16, 16)
    plain = [_decode(model, image, p, lab) for p, lab in CLICKS]
    assert calls[0] == 3 * len(CLICKS)  # outside `decoding` nothing is kept
    calls[0] = 0
    with decoding(image):
        cached = [_decode(model, image, p, lab) for p, lab in CLICKS]
    assert calls[0] == 3  # the three projections, once for the image
    for (a_logits, a_iou), (b_logits, b_iou) in zip(plain, cached, strict=True):
        assert torch.equal(a_logits, b_logits) and torch.equal(a_iou, b_iou)
    with decoding(other):
        _decode(model, other, *CLICKS[0])
    assert calls[0] == 6  # another image computes its own


def test_the_predictor_answers_the_same_clicks_with_the_cache(model):
    # A fresh adapter's own decoder is SAM's (LoRA B = 0) and is never cached: the reference.
    calls = _count_computations(model)  # before the predictor puts the cache in front
    cached, plain = Predictor(model, precision="fp32", clicks="base"), Predictor(model, precision="fp32")
    pixels = torch.Generator().manual_seed(0)
    image = cached.embed([torch.randint(0, 255, (200, 240, 3), generator=pixels, dtype=torch.uint8).numpy()])[0]
    for points, labels in CLICKS:
        points, labels = torch.tensor(points).numpy(), torch.tensor(labels).numpy()
        answer, expected = cached.predict_prompt(image, points, labels), plain.predict_prompt(image, points, labels)
        assert (answer.mask == expected.mask).all() and answer.score == pytest.approx(expected.score, abs=1e-6)
    assert calls[0] == 3  # SAM's decoder computed the image-only projections once for three clicks


def test_a_trained_decoder_is_refused(model):
    with pytest.raises(ValueError, match="frozen decoder"):
        cache_image_projections(model.sam.mask_decoder)  # its LoRA weights train
