import numpy as np
import pytest

from training.data.dataset import SegmentationDataset
from training.data.synthetic import synthetic_dataset
from training.inference.predictor import Predictor
from training.learn.config import TrainConfig
from training.learn.evaluation import evaluate
from training.learn.losses import dice_loss, focal_loss, mask_iou
from training.learn.trainer import train_adapter
from training.model.config import AdapterConfig
from training.model.loading import load_adapter_model, new_adapter_model


@pytest.mark.parametrize("option", [{"max_steps": 0}, {"batch_size": -1}, {"lr": 0}, {"max_seconds": -5},
                                    {"precision": "fp8"}, {"focal_weight": -1}, {"patience": 0}])
def test_train_config_checks_itself(option):
    with pytest.raises(ValueError, match=next(iter(option))):
        TrainConfig(**option)


def test_unknown_train_option_is_named():
    with pytest.raises(ValueError, match="unknown training option.*stepz"):
        TrainConfig.from_dict({"stepz": 3})


def test_losses_reward_the_right_mask():
    import torch

    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1
    valid = torch.ones(8, 8)
    good, bad = target * 20 - 10, -target * 20 + 10
    assert focal_loss(good, target, valid) < focal_loss(bad, target, valid)
    assert dice_loss(good, target, valid) < 0.05 < 0.95 < dice_loss(bad, target, valid)
    assert mask_iou(good, target, valid).item() == 1.0 and mask_iou(bad, target, valid).item() == 0.0
    # An empty target with an empty prediction is a perfect answer, not a division by zero.
    assert mask_iou(-torch.ones(1, 8, 8), torch.zeros(1, 8, 8), valid).item() == 1.0


def test_class_order_must_match(random_vit_t, tiny_dataset):
    model = new_adapter_model(random_vit_t, 128, ["square", "disc", "triangle"])
    with pytest.raises(ValueError, match="set_classes"):
        train_adapter(model, tiny_dataset, TrainConfig(max_steps=1))


def test_empty_dataset_is_refused(random_vit_t, tiny_dataset):
    model = new_adapter_model(random_vit_t, 128, tiny_dataset.class_names)
    with pytest.raises(ValueError, match="empty dataset"):
        train_adapter(model, tiny_dataset.subset([]), TrainConfig(max_steps=1))


def test_same_seed_same_run(random_vit_t, tiny_dataset):
    runs = []
    for _ in range(2):
        model = new_adapter_model(random_vit_t, 128, tiny_dataset.class_names)
        runs.append(train_adapter(model, tiny_dataset, TrainConfig(max_steps=3, batch_size=2, precision="fp32")).losses)
    assert runs[0] == runs[1]


def test_progress_and_step_budget(random_vit_t, tiny_dataset):
    seen = []
    model = new_adapter_model(random_vit_t, 128, tiny_dataset.class_names)
    result = train_adapter(model, tiny_dataset, TrainConfig(max_steps=4, batch_size=2), progress=seen.append)
    assert [p.step for p in seen] == [1, 2, 3, 4]
    assert all(p.max_steps == 4 and p.eta_seconds >= 0 for p in seen)
    assert seen[-1].eta_seconds == 0
    assert result.steps == 4 and result.stopped_because == "max_steps"
    assert not model.training


def test_wall_clock_budget_stops_training(random_vit_t, tiny_dataset):
    model = new_adapter_model(random_vit_t, 128, tiny_dataset.class_names)
    result = train_adapter(model, tiny_dataset, TrainConfig(max_steps=10_000, max_seconds=1.0, batch_size=2))
    assert result.stopped_because == "max_seconds" and result.steps < 10_000


def test_plateau_stops_early(random_vit_t, tiny_dataset):
    model = new_adapter_model(random_vit_t, 128, tiny_dataset.class_names)
    # A learning rate this small cannot improve the loss by 50 % : the plateau rule must fire.
    config = TrainConfig(max_steps=200, lr=1e-9, decoder_lr=1e-9, prompt_lr=1e-9, warmup_steps=0, patience=3,
                         min_improvement=0.5, batch_size=1)
    result = train_adapter(model, tiny_dataset, config)
    assert result.stopped_because == "plateau" and result.steps < 20


def test_evaluate_scores_a_perfect_answer_as_one(random_vit_t):
    model = new_adapter_model(random_vit_t, 128, ["a", "b"])
    predictor = Predictor(model)
    images = synthetic_dataset(3, 96, seed=9).samples
    samples = []
    for sample in images:
        prediction = predictor.predict_classes(predictor.embed([sample.image])[0])
        masks = np.stack([prediction.mask("a"), prediction.mask("b")])
        samples.append(type(sample)(image=sample.image, masks=masks, name=sample.name))
    dataset = SegmentationDataset(["a", "b"], samples)
    metrics = evaluate(model, dataset)
    assert metrics["images"] == 3
    assert all(v["iou"] == pytest.approx(1.0) and v["dice"] == pytest.approx(1.0)
               for v in metrics["per_class"].values())
    inverted = SegmentationDataset(["a", "b"], [type(s)(image=s.image, masks=~s.masks, name=s.name) for s in samples])
    assert evaluate(model, inverted)["mean_iou"] < 0.5


# ----- learning test: random weights, synthetic 3-class data, 128 px, through save -> load -> predict ------
# A step budget, not a time budget: the outcome must not depend on how busy the machine is.
# The encoder kind's LoRA reached train IoU 0.71 after 200 steps (fp32 CPU), so it keeps 400. At 160 px
# (a 10 x 10 token grid) it reached 0.89 in 400 steps, in 177 s instead of the ~8 minutes 256 px took in CI.
# At 128 px (8 x 8 tokens), 400 steps: 0.854 with bf16 autocast and 0.847 in fp32 (what a CPU without native
# bf16 runs), in 142 s instead of 166 s at 160 px (2-core EPYC with native bf16, 2026-12-07); 250 steps
# reached only 0.48, batch 2 for 400 steps 0.60, and 250 steps at lr 3e-4 0.37, so the steps stay. Learning
# on a pretrained base (the default kind) is tested in test_learning_on_a_pretrained_base.py, whose stand-in
# build replaced the full fine-tune test here.
LEARN_STEPS = 400
LEARN_SIZE = 128


@pytest.fixture(scope="module")
def learning_data():
    return synthetic_dataset(8, LEARN_SIZE, seed=1), synthetic_dataset(8, LEARN_SIZE, seed=2)


def _learn(weights, data, adapter: AdapterConfig, train: TrainConfig):
    train_set, val_set = data
    model = new_adapter_model(weights, LEARN_SIZE, train_set.class_names, adapter)
    before = {"train": evaluate(model, train_set)["mean_iou"], "val": evaluate(model, val_set)["mean_iou"]}
    result = train_adapter(model, train_set, train)
    served = load_adapter_model(model.to_bytes(), weights, LEARN_SIZE, train_set.class_names)
    after = {"train": evaluate(served, train_set)["mean_iou"], "val": evaluate(served, val_set)["mean_iou"]}
    print(f"\n{adapter.encoder}/{adapter.decoder}: {result.to_dict()} before {before} after {after}")
    return result, before, after


@pytest.mark.slow
def test_encoder_kind_lora_learns_the_training_images(random_vit_t, learning_data):
    result, before, after = _learn(random_vit_t, learning_data, AdapterConfig.for_kind("encoder"),
                                   TrainConfig(max_steps=LEARN_STEPS, patience=LEARN_STEPS))
    assert before["train"] < 0.15
    assert result.final_loss <= 0.5 * result.first_loss
    assert after["train"] >= 0.8
