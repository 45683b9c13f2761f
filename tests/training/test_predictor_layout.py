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
