"""SAM 1 outputs pinned before the base-model seam: the seam must not change a single mask.

``sam1_reference.npz`` was written by this module (``python -m tests.training.model.test_sam1_reference``)
from the code before the refactor; the test recomputes the same outputs and compares them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.inference.predictor import Predictor
from training.model.config import AdapterConfig
from training.model.loading import new_adapter_model
from training.model.weights import resolve_checkpoint

REFERENCE = Path(__file__).with_name("data") / "sam1_reference.npz"
CASES = {"vit_t": 128, "vit_b": 64}
CLASSES = ["a", "b"]


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


def _image(size: tuple[int, int]) -> np.ndarray:
    return (np.random.default_rng(3).random((*size, 3)) * 255).astype(np.uint8)


def outputs(model_type: str) -> dict[str, np.ndarray]:
    """Embedding, class logits and prompt logits of a perturbed adapter of each kind on one image."""
    size = CASES[model_type]
    weights = resolve_checkpoint(model_type, "random")
    out: dict[str, np.ndarray] = {}
    for kind in ("decoder", "encoder"):
        model = _perturbed(new_adapter_model(weights, size, CLASSES, AdapterConfig.for_kind(kind)))
        predictor = Predictor(model, precision="fp32")
        image = predictor.embed([_image((size + 10, size // 2 + 3))])[0]
        emb = image.embedding
        coords = torch.tensor([[[10.0, 12.0], [30.0, 5.0]]])
        labels = torch.tensor([[1, 0]])
        box = torch.tensor([[4.0, 6.0, 40.0, 50.0]])
        with torch.inference_mode():
            cls, cls_iou = model.class_logits(emb)
            pts, pts_iou = model.prompt_logits(emb, coords, labels, None, [1], multimask=True)
            bx, bx_iou = model.prompt_logits(emb, None, None, box, [None])
            base = model.prompt_logits(emb, coords[:, :1], labels[:, :1], None, None, base_decoder=True)[0]
        click = predictor.predict_prompt(image, points=np.array([[8.0, 9.0]]), point_labels=np.array([1]))
        for name, value in {"embedding": emb, "class": cls, "class_iou": cls_iou, "points": pts,
                            "points_iou": pts_iou, "box": bx, "box_iou": bx_iou, "base": base}.items():
            out[f"{model_type}/{kind}/{name}"] = value.float().numpy()
        out[f"{model_type}/{kind}/click"] = click.mask
    return out


@pytest.mark.parametrize("model_type", sorted(CASES))
def test_sam1_outputs_match_the_reference(model_type):
    reference = np.load(REFERENCE)
    for name, value in outputs(model_type).items():
        expected = reference[name]
        assert value.shape == expected.shape, name
        if value.dtype == bool:
            assert (value != expected).mean() < 1e-3, name
        else:
            np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-4, err_msg=name)


if __name__ == "__main__":
    torch.set_num_threads(1)
    np.savez_compressed(REFERENCE, **{k: v for t in sorted(CASES) for k, v in outputs(t).items()})
    print(REFERENCE, REFERENCE.stat().st_size, file=sys.stderr)
