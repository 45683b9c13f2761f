"""The predictor's CPU options (channels-last encoder, intra-op thread control) keep results unchanged."""


import numpy as np
import pytest
import torch

from training.inference import runtime
from training.inference.predictor import Predictor
from training.model.loading import new_adapter_model
from training.model.weights import resolve_checkpoint


def tiny_model(classes: list[str]):
    return new_adapter_model(resolve_checkpoint("vit_t", "random", None), 128, classes).eval()


def test_channels_last_encoder_matches_the_default_layout():
    model = tiny_model(["a", "b"])
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    plain = Predictor(model, precision="fp32").embed([image])[0]
    fast = Predictor(model, precision="fp32", channels_last=True)
    assert model.sam.image_encoder.patch_embed.seq[0].c.weight.is_contiguous(memory_format=torch.channels_last)
    converted = fast.embed([image])[0]
    assert converted.input_size == plain.input_size and converted.original_size == plain.original_size
    torch.testing.assert_close(converted.embedding, plain.embedding, rtol=1e-4, atol=1e-4)
    masks = fast.predict_classes(converted)
    assert np.array_equal(masks.label_map, Predictor(model, precision="fp32").predict_classes(plain).label_map)


def test_threads_apply_during_model_calls_only_and_keep_results():
    model = tiny_model(["a", "b"])
    image = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    plain = Predictor(model, precision="fp32")
    one = Predictor(model, precision="fp32", threads=1)
    embedding = plain.embed([image])[0]
    before = torch.get_num_threads()
    seen = []
    hooks = [module.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
             for module in (model.sam.image_encoder, model.sam.mask_decoder.transformer)]
    try:
        points, labels = np.array([[30.0, 40.0], [80.0, 20.0]]), np.array([1, 0])
        a = plain.predict_prompt(embedding, points, labels, class_name="a")
        b = one.predict_prompt(embedding, points, labels, class_name="a")
        c = one.predict_classes(embedding)
        d = one.embed([image])[0]
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == [before, 1, 1, 1]
    assert torch.get_num_threads() == before
    assert np.array_equal(a.mask, b.mask) and abs(a.score - b.score) < 1e-4
    assert np.array_equal(c.label_map, plain.predict_classes(embedding).label_map)
    torch.testing.assert_close(d.embedding, embedding.embedding)


def test_free_threads_follow_the_cores_other_processes_leave(monkeypatch):
    model = tiny_model(["a"])
    predictor = Predictor(model, precision="fp32", threads="free")
    embedding = predictor.embed([np.zeros((64, 64, 3), np.uint8)])[0]
    seen = []
    hook = model.sam.mask_decoder.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    try:
        for free in (1, 64):
            monkeypatch.setattr(runtime, "free_cores", lambda free=free: free)
            predictor.predict_prompt(embedding, np.array([[10.0, 10.0]]))
    finally:
        hook.remove()
    assert seen == [1, predictor.max_threads]


def test_zero_threads_are_refused():
    with pytest.raises(ValueError, match="threads"):
        Predictor(tiny_model(["a"]), threads=0)
