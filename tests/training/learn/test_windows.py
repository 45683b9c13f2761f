"""Training on windows of the embedding grid: what a window holds lines up with the whole image."""

from __future__ import annotations

import numpy as np
import torch

from training.learn.config import TrainConfig
from training.learn.trainer import PreparedSample, _point_prompt_loss, _window
from training.model.config import AdapterConfig
from training.model.loading import new_adapter_model

SIZE = 256  # a 16 x 16 token grid; 64 x 64 low-resolution targets


def _sample(grid: int = SIZE // 16) -> PreparedSample:
    low = grid * 4
    targets = torch.zeros(2, low, low)
    targets[0, 40:48, 44:52] = 1  # an object near the bottom right
    targets[1, 2:6, 2:6] = 1
    valid = torch.ones(low, low)
    return PreparedSample(None, targets, valid, torch.randn(1, 256, grid, grid))


def test_a_window_takes_the_matching_targets_and_tokens():
    sample = _sample()
    rng = np.random.default_rng(0)
    for _ in range(20):
        window = _window(sample.embedding, sample, 8, rng)
        row, col = window.origin
        assert window.embedding.shape[-2:] == (8, 8) and 0 <= row <= 8 and 0 <= col <= 8
        assert torch.equal(window.embedding, sample.embedding[..., row : row + 8, col : col + 8])
        assert torch.equal(window.targets, sample.targets[:, row * 4 : row * 4 + 32, col * 4 : col * 4 + 32])


def test_no_window_when_the_grid_is_not_larger():
    sample = _sample()
    window = _window(sample.embedding, sample, 16, np.random.default_rng(0))
    assert window.origin is None and window.embedding is sample.embedding


def test_a_windowed_decode_at_the_origin_of_the_whole_grid_is_the_plain_decode(random_vit_t):
    model = new_adapter_model(random_vit_t, SIZE, ["a", "b"], AdapterConfig.for_kind("decoder"))
    embedding = torch.randn(1, 256, 16, 16)
    with torch.no_grad():
        plain, _ = model.class_logits(embedding)
        windowed, _ = model.class_logits(embedding, origin=(0, 0))
        part, _ = model.class_logits(embedding[..., 4:12, 8:16], origin=(4, 8))
        shifted, _ = model.class_logits(embedding[..., 4:12, 8:16], origin=(0, 0))
    assert torch.equal(plain, windowed)
    assert part.shape[-2:] == (32, 32)
    assert not torch.allclose(part, shifted)  # the positional encoding follows the window


def test_click_points_of_a_window_are_in_the_whole_images_frame(random_vit_t, monkeypatch):
    model = new_adapter_model(random_vit_t, SIZE, ["a", "b"], AdapterConfig.for_kind("decoder"))
    sample = _sample()
    seen = []
    original = model.prompt_logits

    def spy(embedding, coords, labels, box, class_indices, origin=None):
        seen.append((coords.numpy()[0], labels.numpy()[0], origin))
        return original(embedding, coords, labels, box, class_indices, origin=origin)

    monkeypatch.setattr(model, "prompt_logits", spy)
    rng = np.random.default_rng(1)
    config = TrainConfig(window_tokens=8)
    for _ in range(30):
        window = _window(sample.embedding, sample, 8, rng)
        _point_prompt_loss(model, window, config, rng)
    assert seen and any(origin not in (None, (0, 0)) for _, _, origin in seen)
    full = sample.targets.numpy()
    for coords, labels, _ in seen:
        x, y = coords[0]  # the positive click, in input-frame pixels
        assert labels[0] == 1 and full[:, int(y // 4), int(x // 4)].max() == 1
