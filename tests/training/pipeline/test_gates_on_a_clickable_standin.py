"""The run's two gates shown both ways on real model outputs, over a stand-in base whose decoder clicks a little.

The base is the pretrained stand-in with its clicks stage (``build_standin(click_steps=...)``; it goes on
from the plain stand-in the other learning tests build, in the same session folder). Adapters of the
default kind learn the target family (8 images) and are gated on its 16 held-out scenes as a run gates
them: ``training.pipeline.click_check.gate_clicks`` (SAM's decoder being the stand-in's) and ``MaskGate`` on
``score_tasks``. The mask gate must promote the trained adapter over an untrained one and refuse every
sabotage; the click gate must refuse an adapter trained on wrong masks and follow its measured numbers.

Measured: a LoRA scrambled (B x10) or class prompts handed to the wrong classes wreck the promptless masks
(mean IoU 0.03-0.06 vs 0.32) but not the clicks (IoU@1 0.27 vs SAM's 0.235, NoC@90 at the cap both): the click gate
alone would choose them on its IoU@1 tie-break; in a run the mask gate refuses them first, and a candidate
that is not promoted is never clicked (``run._click_verdict``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from testkit.standin import TARGET_CLASSES, build_standin, standin_report, standin_weights, target_split
from testkit.standin_clicks import CLICK_STEPS
from training.data.dataset import Sample, SegmentationDataset
from training.inference.predictor import Predictor
from training.learn.clicks import compare
from training.learn.config import TrainConfig
from training.learn.trainer import train_adapter
from training.model.adapter import SamAdapter
from training.model.loading import load_adapter_model, new_adapter_model
from training.pipeline.click_check import click_objects, gate_clicks
from training.pipeline.local_dataset import sync_dataset
from training.pipeline.scores import MaskGate
from training.pipeline.settings import JobSettings
from training.pipeline.stages import score_tasks

pytestmark = pytest.mark.slow
ADAPTER_STEPS = 120
MAX_CLICKS = 10  # a run's default budget (JobSettings.click_max_clicks); NoC is capped at it
SIZE = 256  # the stand-in's own size
SABOTAGES = ("scrambled LoRA", "swapped class prompts", "both")


@pytest.fixture(scope="session")
def clickable(tmp_path_factory):
    return build_standin(tmp_path_factory.getbasetemp() / "standin", click_steps=CLICK_STEPS)


@pytest.fixture(scope="session")
def held_out(tmp_path_factory, clickable):
    """The target family's held-out scenes as a run's task cache, and every task's embedding (the encoder
    is frozen, so one embedding serves every adapter, as the run's embedding store does)."""
    train_set, held = target_split(train_images=8, held_out=16)
    cache = sync_dataset(held, tmp_path_factory.mktemp("tasks")).cache
    predictor = Predictor(new_adapter_model(standin_weights(clickable), SIZE, TARGET_CLASSES), precision="fp32")
    embeddings = {task: predictor.embed([cache.image(task)], batch_size=1)[0] for task in cache.tasks}
    return train_set, cache, embeddings


@pytest.fixture(scope="session")
def trained(clickable, held_out) -> SamAdapter:
    torch.manual_seed(0)
    model = new_adapter_model(standin_weights(clickable), SIZE, TARGET_CLASSES)
    train_adapter(model, held_out[0], TrainConfig(max_steps=ADAPTER_STEPS, patience=ADAPTER_STEPS, precision="fp32"))
    return model


@pytest.fixture(scope="session")
def misled(clickable, held_out) -> SamAdapter:
    """An adapter trained like ``trained`` on wrong masks: every mask moved 64 px right and down, so a click
    on an object is taught to answer with a region beside it."""
    train_set = held_out[0]
    wrong = [Sample(s.image, np.roll(s.masks, (64, 64), axis=(1, 2)), s.name) for s in train_set.samples]
    torch.manual_seed(0)
    model = new_adapter_model(standin_weights(clickable), SIZE, TARGET_CLASSES)
    config = TrainConfig(max_steps=ADAPTER_STEPS, patience=ADAPTER_STEPS, precision="fp32")
    train_adapter(model, SegmentationDataset(train_set.class_names, wrong), config)
    return model


def sabotaged(model: SamAdapter, how: str, clickable) -> SamAdapter:
    """A copy of ``model`` made worse on purpose: its LoRA entries shuffled (B also scaled up tenfold: a
    trained LoRA's update is small, shuffled alone it would barely move the decoder), like a run that
    diverged, and/or its class prompts handed to the wrong classes."""
    copy = load_adapter_model(model.to_bytes(), standin_weights(clickable), SIZE, TARGET_CLASSES)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if how in ("scrambled LoRA", "both"):
            lora = [(name, p) for name, p in copy.named_parameters() if "lora_" in name]
            assert lora, "the default adapter kind has LoRA in the decoder"
            for name, tensor in lora:
                flat, scale = tensor.view(-1), 10.0 if "lora_B" in name else 1.0
                flat.copy_(flat[torch.randperm(flat.numel(), generator=generator)] * scale)
        if how in ("swapped class prompts", "both"):
            copy.class_prompts.copy_(copy.class_prompts.roll(1, dims=0))  # each class answers with another's tokens
    return copy


def click_verdict(model: SamAdapter, held_out) -> dict:
    _, cache, embeddings = held_out
    objects = click_objects(cache, sorted(cache.tasks), max_objects=64)
    verdict, _ = gate_clicks(model, cache, objects, embeddings.__getitem__, "fp32", MAX_CLICKS, {})
    return verdict


def mask_verdict(candidate: SamAdapter, active: SamAdapter, held_out) -> dict:
    _, cache, embeddings = held_out
    tasks = sorted(cache.tasks)
    scores = [score_tasks(m, cache, tasks, embeddings.__getitem__, "fp32") for m in (candidate, active)]
    gate = MaskGate(JobSettings().promote_tolerance)
    return gate.decide([scores[0][t] for t in tasks], [scores[1][t] for t in tasks], cache.class_names)


def describe(verdict: dict) -> str:
    c, b = verdict["candidate"], verdict["base"]
    return (f"adapter NoC@90 {c['noc90']:.2f} IoU@1 {c['iou_at']['1']:.3f} vs SAM's decoder NoC@90 {b['noc90']:.2f} "
            f"IoU@1 {b['iou_at']['1']:.3f} on {c['objects']} objects -> {verdict['decoder']}")


def test_the_stand_in_clicks_better_on_its_own_family_than_on_the_target_family(clickable):
    clicks = standin_report(clickable)["clicks"]
    own, target = clicks["own"], clicks["target"]
    print(f"\nstand-in clicks: own {own}\ntarget {target}")
    assert own["iou_at"]["1"] >= 0.3 and own["noc85"] < 20  # it follows clicks on its own scenes (0.40, 18.9)
    assert target["iou_at"]["1"] < own["iou_at"]["1"]  # the domain shift the adapters are for


@pytest.fixture(scope="session")
def trained_clicks(trained, held_out) -> dict:
    return click_verdict(trained, held_out)


def test_the_click_gate_follows_the_measured_numbers_for_the_trained_adapter(trained_clicks):
    verdict = trained_clicks
    candidate, base = verdict["candidate"], verdict["base"]
    print(f"\ntrained: {describe(verdict)}")
    assert candidate["objects"] == base["objects"] >= 32
    assert verdict["decoder"] == ("adapter" if compare(candidate, base) else "base")
    # Measured (200-step clicks stage): NoC@90 at the cap for both, IoU@1 0.316 (adapter) vs 0.235 (SAM's
    # decoder): chosen on the tie-break. The adapter must at least not answer the first click worse.
    assert candidate["iou_at"]["1"] > base["iou_at"]["1"] and verdict["decoder"] == "adapter"


@pytest.mark.xfail(strict=True, reason="measured: no target-family object reaches IoU 0.90 within 10 or 20 clicks, for "
                   "either decoder (NoC@90 at the cap both): the stand-in does not click well enough yet (issue 23)")
def test_the_trained_adapter_needs_fewer_clicks_than_sams_decoder(trained_clicks):
    verdict = trained_clicks
    assert verdict["candidate"]["noc90"] < verdict["base"]["noc90"] and verdict["decoder"] == "adapter"


def test_the_click_gate_never_chooses_an_adapter_trained_on_wrong_masks(misled, held_out):
    verdict = click_verdict(misled, held_out)
    print(f"\nwrong masks: {describe(verdict)}")
    candidate, base = verdict["candidate"], verdict["base"]
    assert verdict["decoder"] == "base" and not compare(candidate, base)
    # Refused for what was measured: it clicks worse than SAM's decoder.
    assert candidate["noc90"] >= base["noc90"] and candidate["iou_at"]["1"] < base["iou_at"]["1"]


def test_the_mask_gate_promotes_the_trained_adapter_over_an_untrained_one(trained, held_out, clickable):
    torch.manual_seed(0)
    untrained = new_adapter_model(standin_weights(clickable), SIZE, TARGET_CLASSES)
    verdict = mask_verdict(trained, untrained, held_out)
    print(f"\ntrained vs untrained: {verdict}")
    assert verdict["promote"] and verdict["margin"] > verdict["allowed"]
    assert not mask_verdict(untrained, trained, held_out)["promote"]  # and the other way round: refused


@pytest.mark.parametrize("how", (*SABOTAGES, "trained on wrong masks"))
def test_the_mask_gate_never_promotes_a_sabotaged_adapter(trained, misled, held_out, clickable, how):
    candidate = misled if how == "trained on wrong masks" else sabotaged(trained, how, clickable)
    verdict = mask_verdict(candidate, trained, held_out)
    print(f"\n{how}: {verdict}")
    assert not verdict["promote"] and verdict["margin"] < -verdict["allowed"]
