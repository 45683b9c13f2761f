"""Learning on the path a user with the official checkpoint gets: a frozen pretrained encoder.

The base is the pretrained stand-in of ``testkit.standin`` (a vit_t trained on one family of synthetic
scenes, built once per test session, about 3.5 minutes here). Adapters of the default ("decoder") kind
learn a different family with its own classes from 8 images and are measured on 16 held-out images
through save -> load -> predict. Bars set from measurements (one seed, 256 px, 2026-12-01): untrained
held-out mIoU 0.05-0.07 (0.154 on a native-bf16 box, 2026-12-07); decoder LoRA + prompts after 200 steps
0.41-0.49; the whole decoder 0.38 (it overfits).
A step budget, not a time budget: the outcome must not depend on how busy the machine is.
"""

from __future__ import annotations

import pytest
import torch

from testkit.standin import TARGET_CLASSES, build_standin, standin_report, standin_weights, target_split
from training.learn.click_gate import click_gate
from training.learn.clicks import compare
from training.learn.config import TrainConfig
from training.learn.evaluation import evaluate
from training.learn.trainer import train_adapter
from training.model.loading import load_adapter_model, new_adapter_model

pytestmark = pytest.mark.slow
STEPS = 200


@pytest.fixture(scope="session")
def standin(tmp_path_factory):
    # The session's one stand-in folder: the gate tests' clickable stand-in goes on from this one.
    return build_standin(tmp_path_factory.getbasetemp() / "standin")


@pytest.fixture(scope="session")
def target():
    return target_split(train_images=8, held_out=16)


@pytest.fixture(scope="session")
def learned(standin, target):
    train_set, held_out = target
    weights = standin_weights(standin)
    # The new class prompts start random: seeded, "before" does not depend on what ran earlier in the session.
    torch.manual_seed(0)
    model = new_adapter_model(weights, 256, TARGET_CLASSES)
    before = evaluate(model, held_out, precision="fp32")
    statistics = {k: v.clone() for k, v in model.sam.image_encoder.state_dict().items() if "running" in k}
    result = train_adapter(model, train_set, TrainConfig(max_steps=STEPS, patience=STEPS, precision="fp32"))
    served = load_adapter_model(model.to_bytes(), weights, 256, TARGET_CLASSES)
    after = evaluate(served, held_out, precision="fp32")
    print(f"\nstand-in {standin_report(standin)['held_out_mean_iou']:.3f}; decoder kind {result.to_dict()}: "
          f"held-out mIoU {before['mean_iou']:.3f} -> {after['mean_iou']:.3f}")
    return model, served, before, after, statistics


def test_the_standin_learned_features_of_its_own_scenes(standin):
    assert standin_report(standin)["held_out_mean_iou"] >= 0.5  # measured 0.77


def test_a_decoder_adapter_learns_new_scenes_from_eight_images(learned):
    model, _, before, after, statistics = learned
    assert model.config.kind == "decoder"
    # Untrained (random class prompts): 0.05-0.07 on an fp32-only box, 0.154 on a box with native bf16, whose
    # kernels build a slightly different stand-in. The gain below is what shows learning.
    assert before["mean_iou"] <= 0.2
    assert after["mean_iou"] >= 0.35 and after["mean_iou"] - before["mean_iou"] >= 0.25
    # The path of the official checkpoint: BatchNorm statistics stay the base model's.
    now = model.sam.image_encoder.state_dict()
    assert all(torch.equal(now[k], v) for k, v in statistics.items()) and statistics


def test_its_clicks_are_measured_against_sams_decoder(learned, target):
    _, served, _, _, _ = learned
    gate = click_gate(served, target[1], precision="fp32")
    candidate, base = gate["candidate"], gate["base"]
    print(f"\nclicks: adapter NoC@90 {candidate['noc90']:.2f} IoU@1 {candidate['iou_at']['1']:.3f}; "
          f"SAM's decoder NoC@90 {base['noc90']:.2f} IoU@1 {base['iou_at']['1']:.3f} -> {gate['decoder']}")
    assert candidate["objects"] == base["objects"] >= 16
    # Measured: both decoders need all 20 clicks here (IoU@1 0.056 adapter vs 0.045 SAM's): the stand-in's
    # own decoder never learned to click well, so no NoC bar yet; the gate must follow its rule.
    assert gate["decoder"] == ("adapter" if compare(candidate, base) else "base")
    assert all(0.0 <= m["iou_at"][k] <= 1.0 and 1 <= m["noc90"] <= 20 for m in (candidate, base) for k in "135")
