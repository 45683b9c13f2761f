"""Training a frozen-encoder ("decoder" kind) adapter on stored embeddings."""

import pytest
import torch

from training.inference.embedding_store import MB, EmbeddingStore
from training.learn.config import TrainConfig
from training.learn.embeddings import TrainingEmbeddings
from training.learn.trainer import train_adapter
from training.model.config import AdapterConfig
from training.model.loading import new_adapter_model


def count_encoder_calls(model) -> list:
    calls = []
    model.sam.image_encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    return calls


def test_the_encoder_runs_once_per_image_and_never_in_the_loop(random_vit_t, tiny_dataset, tmp_path):
    model = new_adapter_model(random_vit_t, 128, tiny_dataset.class_names)
    assert model.config.kind == "decoder"
    calls = count_encoder_calls(model)
    store = EmbeddingStore(tmp_path / "embeddings", 64 * MB)
    embeddings = TrainingEmbeddings(model, store, precision="fp32")
    result = train_adapter(model, tiny_dataset, TrainConfig(max_steps=6, batch_size=2), embeddings=embeddings)
    assert result.steps == 6
    assert sum(calls) == embeddings.encoded == len(tiny_dataset)  # each image once, no mirror images
    assert len(store) == len(tiny_dataset)


def test_a_second_run_on_the_same_images_encodes_nothing(random_vit_t, tiny_dataset, tmp_path):
    store = EmbeddingStore(tmp_path / "embeddings", 64 * MB)
    first = new_adapter_model(random_vit_t, 128, tiny_dataset.class_names)
    train_adapter(first, tiny_dataset, TrainConfig(max_steps=2, batch_size=2),
                  embeddings=TrainingEmbeddings(first, store, "fp32"))
    again = new_adapter_model(random_vit_t, 128, tiny_dataset.class_names)
    calls = count_encoder_calls(again)
    embeddings = TrainingEmbeddings(again, store, "fp32")
    train_adapter(again, tiny_dataset, TrainConfig(max_steps=2, batch_size=2), embeddings=embeddings)
    assert calls == [] and embeddings.encoded == 0 and embeddings.reused == len(tiny_dataset)


def test_training_a_decoder_adapter_leaves_the_embeddings_the_base_models(random_vit_t, tiny_dataset):
    model = new_adapter_model(random_vit_t, 128, tiny_dataset.class_names)
    image = torch.zeros(1, 3, 128, 128)
    before = [t.detach().clone() for t in model.encode(image).tensors()]
    result = train_adapter(model, tiny_dataset, TrainConfig(max_steps=4, batch_size=2, precision="fp32"))
    assert result.final_loss < result.first_loss * 1.5  # it trained
    after = model.encode(image).tensors()
    assert len(after) == len(before)
    for new, old in zip(after, before, strict=True):
        torch.testing.assert_close(new, old, rtol=0, atol=0)
    assert not any(name.startswith("sam.image_encoder") for name in model.adapter_state())


def test_stored_embeddings_need_a_frozen_encoder(random_vit_t):
    model = new_adapter_model(random_vit_t, 128, ["a"], AdapterConfig.for_kind("encoder"))
    with pytest.raises(ValueError, match="frozen image encoder.*'lora'"):
        TrainingEmbeddings(model)


def test_adapter_kinds():
    assert AdapterConfig().kind == "decoder" and AdapterConfig.for_kind("decoder").encoder == "frozen"
    assert AdapterConfig.for_kind("encoder").encoder == "lora"
    assert AdapterConfig.for_kind("encoder", encoder="full").encoder == "full"
    with pytest.raises(ValueError, match="contradicts adapter kind 'decoder'"):
        AdapterConfig.for_kind("decoder", encoder="lora")
    with pytest.raises(ValueError, match="adapter kind 'big' is not one of decoder, encoder"):
        AdapterConfig.for_kind("big")
