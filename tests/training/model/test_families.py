"""Every base-model family through the seam: builds, feature layout, prompts, adapters, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.data.synthetic import synthetic_dataset
from training.inference.predictor import Predictor
from training.learn.config import TrainConfig
from training.learn.trainer import train_adapter
from training.model.artifact import AdapterMismatchError, read_artifact
from training.model.base_models import BASE_MODELS, base_model, build_sam, check_image_size
from training.model.config import AdapterConfig
from training.model.families.sam2 import build_base
from training.model.loading import load_adapter_model, new_adapter_model
from training.model.weights import resolve_checkpoint

SAM2 = "sam2.1_hiera_t"
CLASSES = ["disc", "square", "triangle"]
QUICK = ["vit_t", "vit_b", "sam2.1_hiera_t", "sam2.1_hiera_s"]
LARGE = ["vit_l", "vit_h", "sam2.1_hiera_b+", "sam2.1_hiera_l"]
assert set(QUICK + LARGE) == set(BASE_MODELS)


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def _check_builds(name: str, size: int) -> None:
    model = new_adapter_model(resolve_checkpoint(name, "random"), size, ["a"])
    with torch.inference_mode():
        features = model.encode(torch.zeros(1, 3, size, size))
    layout = base_model(name).feature_shapes(size)
    assert [tuple(t.shape[1:]) for t in features.tensors()] == list(layout.values())
    image = Predictor(model, precision="fp32").embed([_image(size - 7, size // 2)])[0]
    logits, iou = model.class_logits(image.features)
    assert logits.shape == (1, 1, size // 4, size // 4) and iou.shape == (1, 1)


@pytest.mark.parametrize("name", QUICK)
def test_every_family_builds_at_a_small_size(name):
    _check_builds(name, 128)


@pytest.mark.slow
@pytest.mark.parametrize("name", LARGE)
def test_the_large_models_build_at_a_small_size(name):
    _check_builds(name, 64)


def test_sam2_sizes_follow_hieras_stride():
    assert check_image_size(96, SAM2) == 96
    with pytest.raises(ValueError, match="multiple of 32"):
        check_image_size(80, SAM2)


def test_a_sam2_state_dict_loads_strictly_at_another_size():
    full = build_sam(SAM2, 256)
    with torch.no_grad():
        full.mask_decoder.iou_token.weight.normal_()
    state = {f"sam_mask_decoder.{k}": v for k, v in full.mask_decoder.state_dict().items()}
    # What a checkpoint holds: SAM2Base's names (the video parts included).
    checkpoint = {**build_base("configs/sam2.1/sam2.1_hiera_t.yaml", 256).state_dict(), **state}
    small = build_sam(SAM2, 128, state_dict=checkpoint)
    assert torch.equal(small.mask_decoder.iou_token.weight, full.mask_decoder.iou_token.weight)


@pytest.fixture(scope="module")
def sam2_model():
    return new_adapter_model(resolve_checkpoint(SAM2, "random"), 128, CLASSES)


def test_sam2_clicks_and_boxes_come_out_at_the_image_size(sam2_model):
    predictor = Predictor(sam2_model, precision="fp32")
    image = predictor.embed([_image(90, 140)])[0]
    assert image.input_size == (128, 128)  # SAM 2 stretches to its square input
    first = predictor.predict_prompt(image, points=np.array([[20.0, 30.0]]), point_labels=np.array([1]))
    assert first.mask.shape == (90, 140) and first.low_res.shape == (1, 32, 32)
    two = np.array([[20.0, 30.0], [100.0, 60.0]])
    fed = predictor.click_memory.previous(image.embedding, two.astype(np.float32), np.array([1, 0]), None,
                                          (None, "adapter"))
    assert fed is not None and torch.equal(fed, first.low_res)
    second = predictor.predict_prompt(image, points=two, point_labels=np.array([1, 0]))
    plain = predictor._predict_prompt(image, two, np.array([1, 0]), None, None, False, None)
    assert second.mask.shape == (90, 140)
    assert not torch.equal(second.low_res, plain.low_res)  # the previous mask went in
    boxed = predictor.predict_prompt(image, box=np.array([10, 10, 120, 80]), class_name="disc", decoder="base")
    assert boxed.mask.shape == (90, 140)
    classes = predictor.predict_classes(image)
    assert classes.label_map.shape == (90, 140)


def test_a_sam2_decoder_adapter_trains_on_stored_embeddings_and_its_masks_change(sam2_model):
    model = new_adapter_model(resolve_checkpoint(SAM2, "random"), 128, CLASSES)
    data = synthetic_dataset(3, 128, seed=5)
    model.set_classes(list(data.class_names))
    image = Predictor(model, precision="fp32").embed([data.samples[0].image])[0]
    with torch.inference_mode():
        before = model.class_logits(image.features)[0].clone()
    result = train_adapter(model, data, TrainConfig(max_steps=4, batch_size=2, warmup_steps=1, precision="fp32"))
    assert result.steps == 4
    with torch.inference_mode():
        after = model.class_logits(image.features)[0]
    assert not torch.allclose(before, after)
    assert model.base_mask_decoder is not None  # the click gate's other side: SAM 2's own decoder
    loaded = load_adapter_model(model.to_bytes(), resolve_checkpoint(SAM2, "random"), 128)
    with torch.inference_mode():
        assert torch.allclose(loaded.class_logits(image.features)[0], after, atol=1e-5)


def test_an_adapter_of_one_family_is_refused_by_another(sam2_model):
    data = sam2_model.to_bytes()
    with pytest.raises(AdapterMismatchError, match=r"trained on sam2\.1_hiera_t .*this base model is vit_t"):
        load_adapter_model(data, resolve_checkpoint("vit_t", "random"), 128)


def test_vit_b_trains_an_encoder_lora_adapter_of_a_chosen_rank_saved_as_safetensors():
    weights = resolve_checkpoint("vit_b", "random")
    config = AdapterConfig.for_kind("encoder", lora_rank=2)
    data = synthetic_dataset(2, 64, seed=1)
    model = new_adapter_model(weights, 64, list(data.class_names), config)
    result = train_adapter(model, data, TrainConfig(max_steps=2, batch_size=1, warmup_steps=1, precision="fp32"))
    assert result.steps == 2
    artifact = read_artifact(model.to_bytes())
    lora = {k: v for k, v in artifact.tensors.items() if k.startswith("sam.image_encoder.") and "lora_A" in k}
    assert len(lora) == 12 and all(v.shape[0] == 2 for v in lora.values())  # 12 ViT-B blocks' qkv, rank 2
    assert artifact.header.config.lora_rank == 2 and artifact.header.base.model_type == "vit_b"


def test_importing_the_models_prints_no_known_warnings():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-W", "default", "-c", "import training.model.base_models"],
                         capture_output=True, text=True, check=True)
    assert "timm" not in out.stderr and "Overwriting" not in out.stderr, out.stderr
