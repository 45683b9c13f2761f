import numpy as np
import pytest
import torch

from training.data.images import to_rgb_uint8
from training.inference.predictor import Predictor
from training.model.artifact import AdapterHeader, AdapterMismatchError, read_artifact
from training.model.config import AdapterConfig
from training.model.loading import load_adapter_model, model_label, new_adapter_model
from training.model.weights import resolve_checkpoint

CLASSES = ["disc", "square", "triangle"]


def _perturb(model, seed=0):
    """Make the adapter non-trivial: LoRA B matrices start at zero, which would hide load bugs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


@pytest.fixture(scope="module")
def model(random_vit_t):
    return _perturb(new_adapter_model(random_vit_t, 128, CLASSES))


def test_default_adapter_leaves_the_encoder_frozen(random_vit_t):
    model = new_adapter_model(random_vit_t, 128, CLASSES)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert model.config.kind == "decoder" and "class_prompts" in names
    assert names and not any(n.startswith("sam.image_encoder.") for n in names)
    assert any(n.startswith("sam.mask_decoder.") for n in names)


def test_encoder_kind_trains_lora_and_prompts(random_vit_t):
    model = new_adapter_model(random_vit_t, 128, CLASSES, AdapterConfig.for_kind("encoder"))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    encoder_lora = [n for n in names if n.startswith("sam.image_encoder.")]
    assert encoder_lora and all("lora_" in n and ".attn.qkv." in n for n in encoder_lora)
    assert len(encoder_lora) == 20  # 10 TinyViT qkv layers x (A, B)
    assert "class_prompts" in names
    # vit_t rank-8 qkv LoRA: 59,392 encoder parameters.
    assert sum(p.numel() for n, p in model.named_parameters() if n in encoder_lora) == 59_392


def test_round_trip_gives_identical_predictions(model, random_vit_t):
    data = model.to_bytes({"note": "test"})
    loaded = load_adapter_model(data, random_vit_t, 128, CLASSES)
    image = (np.random.default_rng(0).random((150, 97, 3)) * 255).astype(np.uint8)
    a, b = Predictor(model, precision="fp32"), Predictor(loaded, precision="fp32")
    ea, eb = a.embed([image])[0], b.embed([image])[0]
    assert torch.equal(ea.embedding, eb.embedding)
    pa, pb = a.predict_classes(ea), b.predict_classes(eb)
    assert np.array_equal(pa.label_map, pb.label_map) and pa.scores == pb.scores
    header = read_artifact(data).header
    assert header.extra["note"] == "test" and header.class_names == CLASSES
    assert header.base.to_dict() == {"model_type": "vit_t", "checkpoint_sha256": "random", "image_size": 128}
    assert header.to_json()["note"] == "test"


def test_adapter_on_another_base_fails_clearly(model, random_vit_t):
    data = model.to_bytes()
    with pytest.raises(AdapterMismatchError, match="trained on vit_t.*128 px.*this base model is vit_t.*256 px"):
        load_adapter_model(data, random_vit_t, 256)
    with pytest.raises(AdapterMismatchError, match="this base model is vit_b"):
        load_adapter_model(data, resolve_checkpoint("vit_b", "random"), 128)


def test_adapter_with_other_classes_fails_clearly(model, random_vit_t):
    with pytest.raises(AdapterMismatchError, match=r"adapter classes \['disc', 'square', 'triangle'\] differ"):
        load_adapter_model(model.to_bytes(), random_vit_t, 128, ["disc", "star"])


def test_junk_is_not_an_adapter(random_vit_t):
    with pytest.raises(AdapterMismatchError, match="not a samloop adapter"):
        load_adapter_model(b"\x00" * 100, random_vit_t, 128)


def test_hot_swap_and_reset(random_vit_t):
    live = new_adapter_model(random_vit_t, 128, ["x"])
    fresh_prediction = _embed_mean(live)
    other = _perturb(new_adapter_model(random_vit_t, 128, CLASSES), seed=5)
    live.apply_artifact(read_artifact(other.to_bytes()))
    assert live.class_names == CLASSES
    assert _embed_mean(live) == pytest.approx(_embed_mean(other), abs=1e-6)
    live.reset_to_base()
    assert _embed_mean(live) == pytest.approx(fresh_prediction, abs=1e-6)


def _embed_mean(model):
    image = np.full((64, 64, 3), 90, np.uint8)
    image[10:40, 20:50] = 200
    return float(Predictor(model, precision="fp32").embed([image])[0].embedding.abs().mean())


def test_set_classes_keeps_known_prompts(model, random_vit_t):
    clone = new_adapter_model(random_vit_t, 128, CLASSES)
    clone.class_prompts.data.copy_(model.class_prompts.data)
    clone.set_classes(["triangle", "star", "disc"])
    assert clone.class_names == ["triangle", "star", "disc"]
    assert torch.equal(clone.class_prompts[0], model.class_prompts[2])
    assert torch.equal(clone.class_prompts[2], model.class_prompts[0])
    with pytest.raises(ValueError, match="unique"):
        clone.set_classes(["a", "a"])


def test_full_fine_tune_artifact_is_larger(random_vit_t):
    lora = new_adapter_model(random_vit_t, 128, CLASSES, AdapterConfig(decoder="lora")).to_bytes()
    full = new_adapter_model(random_vit_t, 128, CLASSES, AdapterConfig(encoder="full", decoder="lora")).to_bytes()
    assert len(lora) < 1_000_000 < 10 * len(lora) < len(full)
    assert read_artifact(full).header.config.encoder == "full"


@pytest.mark.parametrize("option", [{"encoder": "half"}, {"decoder": "x"}, {"lora_rank": 0}, {"prompt_tokens": 0},
                                    {"norm_statistics": "sometimes"}, {"lora_alpha": -1}])
def test_adapter_config_checks_itself(option):
    with pytest.raises(ValueError, match=next(iter(option))):
        AdapterConfig(**option)


def test_model_label_says_random():
    assert model_label(new_adapter_model(resolve_checkpoint("vit_t", "random"), 128, ["a"]).base) \
        == "samloop-vit_t-128-RANDOM-WEIGHTS"


@pytest.mark.parametrize("kind", ["rgb", "gray", "rgba", "uint16"])
def test_every_image_kind_gives_masks_at_original_resolution(model, kind):
    rng = np.random.default_rng(1)
    shapes = {"rgb": (61, 83, 3), "gray": (61, 83), "rgba": (61, 83, 4), "uint16": (61, 83, 3)}
    array = rng.integers(0, 65535 if kind == "uint16" else 255, shapes[kind]).astype(
        np.uint16 if kind == "uint16" else np.uint8)
    predictor = Predictor(model)
    embedding = predictor.embed([to_rgb_uint8(array)])[0]
    assert predictor.predict_classes(embedding).label_map.shape == (61, 83)
    clicked = predictor.predict_prompt(embedding, points=np.array([[40, 30]]), point_labels=np.array([1]),
                                       box=np.array([10, 10, 70, 50]), class_name="disc")
    assert clicked.mask.shape == (61, 83) and clicked.mask.dtype == bool


def test_class_map_has_one_class_per_pixel(model):
    predictor = Predictor(model)
    image = (np.random.default_rng(2).random((90, 70, 3)) * 255).astype(np.uint8)
    prediction = predictor.predict_classes(predictor.embed([image])[0])
    assert prediction.label_map.max() <= len(CLASSES)
    masks = [prediction.mask(n) for n in CLASSES]
    assert (np.sum(masks, axis=0) <= 1).all()
    assert set(prediction.scores) == {n for n, m in zip(CLASSES, masks, strict=True) if m.any()}
    assert all(0 <= s <= 1 for s in prediction.scores.values())


def test_prompt_needs_a_point_or_box(model):
    predictor = Predictor(model)
    embedding = predictor.embed([np.zeros((32, 32, 3), np.uint8)])[0]
    with pytest.raises(ValueError, match="at least one point or a box"):
        predictor.predict_prompt(embedding)
    with pytest.raises(ValueError, match="2 points but 1 point labels"):
        predictor.predict_prompt(embedding, points=np.array([[1, 1], [2, 2]]), point_labels=np.array([1]))


def test_a_header_without_its_base_is_refused_with_a_reason(model):
    good = AdapterHeader.from_json(read_artifact(model.to_bytes()).header.to_json())
    assert good.class_names == CLASSES and good.config == model.config
    broken = {**good.to_json()}
    del broken["base"]
    with pytest.raises(AdapterMismatchError, match="adapter header is unreadable.*base"):
        AdapterHeader.from_json(broken)
    with pytest.raises(AdapterMismatchError, match="not a samloop adapter"):
        AdapterHeader.from_json({**good.to_json(), "format": "other/1"})


def test_joint_decoding_gives_every_class_from_one_decoder_pass(model):
    calls = []
    hook = model.sam.mask_decoder.transformer.register_forward_hook(lambda *_: calls.append(1))
    embedding = torch.randn(1, 256, 8, 8)
    try:
        logits, iou = model.class_logits(embedding)
        picked, picked_iou = model.class_logits(embedding, [2, 0])
    finally:
        hook.remove()
    assert logits.shape == (3, 1, 32, 32) and iou.shape == (3, 1)
    assert len(calls) == 2  # one transformer pass per call, not one per class
    assert torch.equal(picked, logits[[2, 0]]) and torch.equal(picked_iou, iou[[2, 0]])


def test_adapters_from_before_joint_decoding_keep_decoding_each_class_alone(model):
    old = read_artifact(model.to_bytes()).header.to_json()
    del old["adapter_config"]["class_decoding"]
    assert AdapterHeader.from_json(old).config.class_decoding == "separate"


def test_the_positional_grid_is_computed_once_and_follows_a_loaded_matrix(random_vit_t):
    model = new_adapter_model(random_vit_t, 128, CLASSES)
    embedding = torch.zeros(1, 256, 8, 8)
    with torch.inference_mode():
        first = model._dense_pe(embedding, None)
        assert model._dense_pe(embedding, None) is first  # not rebuilt per decode
    training_pe = model._dense_pe(embedding, None)  # outside inference mode: a tensor autograd may save
    assert not training_pe.is_inference() and torch.equal(training_pe, first)
    matrix = model.sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    with torch.no_grad():
        matrix.mul_(2.0)  # what loading other base weights in place does
    with torch.inference_mode():
        again = model._dense_pe(embedding, None)
        assert torch.equal(again, model.sam.prompt_encoder.get_dense_pe())
    assert not torch.allclose(again, first)
