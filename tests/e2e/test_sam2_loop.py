"""One Label Studio flow on SAM 2.1 tiny at 256 px (random weights): connect, click, labels, a new version,
batch predictions carrying it. The vit_t flow (``test_brush_loop``) covers the rest; this one shows the
other family goes through the same backend, worker and store."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e import ls_api as api
from tests.e2e.label_studio import LabelStudioServer
from tests.e2e.samloop_backend import SamloopBackend, timed
from tests.e2e.test_brush_loop import (
    CLASSES,
    HEIGHT,
    TRAIN_TIMEOUT_S,
    WIDTH,
    Scenario,
    _annotation,
    _check_batch,
    _interactive,
)
from training.data.synthetic import synthetic_dataset

pytestmark = pytest.mark.e2e

SAM2 = "sam2.1_hiera_t"


def test_a_sam2_project_clicks_learns_and_predicts(label_studio: LabelStudioServer,
                                                    samloop_factory: Callable[..., SamloopBackend]) -> None:
    backend = samloop_factory(SAM_MODEL=SAM2)
    assert backend.health()["model_type"] == SAM2
    samples = synthetic_dataset(5, (HEIGHT, WIDTH), seed=11, prefix="sam2").samples
    with label_studio.client(timeout=120) as client:
        project = api.create_project(client, api.brush_config(CLASSES, smart=True), title="samloop e2e sam2")
        tasks = api.import_named_images(client, project["id"], [(s.name, s.image) for s in samples])
        with timed("sam2: connect samloop in LS"):
            ml = api.connect_ml_backend(client, project["id"], backend.url)
        assert ml["state"] == "CO", ml
        scenario = Scenario(label_studio, backend, project["id"], ml["id"], tasks, samples)
        clicked = _interactive(scenario, client, 4, 0)
        assert clicked["result"], clicked
        for index in range(3):
            api.create_annotation(client, tasks[index]["id"], _annotation(samples[index]))
        with timed("sam2: annotations -> first active adapter version"):
            version = backend.wait_for_active_version(project["id"], TRAIN_TIMEOUT_S)
        backend.wait_training_idle(project["id"], TRAIN_TIMEOUT_S)
        assert SAM2 in scenario.active()
        _check_batch(scenario, client, [3, 4], scenario.active())
    assert version
