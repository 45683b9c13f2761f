"""A training run on SAM 2.1 tiny (random weights, 64 px): stored embeddings with all three maps, the decoder
adapter, the click gate, and a later run on another base model that does not build on it."""

from __future__ import annotations

from pathlib import Path

from testkit.fake_label_studio import FakeLabelStudio
from testkit.ls_annotations import BRUSH_POLYGON_CONFIG
from tests.training.pipeline.test_incremental_run import PROJECT, add_scene, settings_for
from training.inference.embedding_store import MB, EmbeddingStore
from training.jobs.training_job import train_project
from training.model.artifact import read_artifact
from training.registry import open_registry

SAM2 = "sam2.1_hiera_t"


def test_a_sam2_run_trains_a_decoder_adapter_on_stored_feature_maps(tmp_path):
    with FakeLabelStudio() as ls:
        ls.add_project(7, BRUSH_POLYGON_CONFIG)
        for seed in range(5):
            add_scene(ls, seed)
        settings = settings_for(ls, tmp_path, model_type=SAM2)
        outcome = train_project(PROJECT, settings)
        assert outcome["status"] == "promoted", outcome
        registry = open_registry(str(tmp_path / "adapters"))
        header = read_artifact(registry.load(PROJECT, outcome["version"])[1]).header
        assert header.base.model_type == SAM2 and header.config.kind == "decoder"
        assert header.extra.get("clicks_decoder") in ("base", "adapter")  # the click gate ran
        store = EmbeddingStore(Path(settings.data_dir) / "embeddings", 64 * MB)
        assert len(store) >= 4
        entry = store.get(next(iter(store._cache)))
        assert [t.shape[1] for t in entry.features.tensors()] == [256, 32, 64]
        # The same project on another base model starts afresh: the SAM 2 version is not built on.
        again = train_project(PROJECT, settings_for(ls, tmp_path, model_type="vit_t"))
        assert again["status"] in ("promoted", "not_promoted")
        assert read_artifact(registry.load(PROJECT, again["version"])[1]).header.base.model_type == "vit_t"
