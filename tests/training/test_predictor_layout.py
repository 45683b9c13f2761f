"""Predictor(channels_last=True) gives the same embeddings and masks as the default layout."""

import numpy as np
import torch

from training.checkpoints import resolve_checkpoint
from training.models import new_adapter_model
from training.predictor import Predictor


def test_channels_last_encoder_matches_the_default_layout():
    weights = resolve_checkpoint("vit_t", "random", None)
    model = new_adapter_model(weights, 128, ["a", "b"]).eval()
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    plain = Predictor(model, precision="fp32").embed([image])[0]
    fast = Predictor(model, precision="fp32", channels_last=True)
    assert model.sam.image_encoder.patch_embed.seq[0].c.weight.is_contiguous(memory_format=torch.channels_last)
    converted = fast.embed([image])[0]
    assert converted.input_size == plain.input_size and converted.original_size == plain.original_size
    torch.testing.assert_close(converted.embedding, plain.embedding, rtol=1e-4, atol=1e-4)
    masks = fast.predict_classes(converted)
    assert np.array_equal(masks.label_map, Predictor(model, precision="fp32").predict_classes(plain).label_map)


def test_decoder_threads_apply_during_decoding_only_and_keep_results():
    weights = resolve_checkpoint("vit_t", "random", None)
    model = new_adapter_model(weights, 128, ["a", "b"]).eval()
    image = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    plain = Predictor(model, precision="fp32")
    one = Predictor(model, precision="fp32", decoder_threads=1)
    embedding = plain.embed([image])[0]
    before = torch.get_num_threads()
    seen = []
    hook = model.sam.mask_decoder.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    try:
        points, labels = np.array([[30.0, 40.0], [80.0, 20.0]]), np.array([1, 0])
        a = plain.predict_prompt(embedding, points, labels, class_name="a")
        b = one.predict_prompt(embedding, points, labels, class_name="a")
        c = one.predict_classes(embedding)
    finally:
        hook.remove()
    assert seen == [before, 1, 1]
    assert torch.get_num_threads() == before
    assert np.array_equal(a.mask, b.mask) and abs(a.score - b.score) < 1e-4
    assert np.array_equal(c.label_map, plain.predict_classes(embedding).label_map)
