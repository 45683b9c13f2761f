"""Issue 24, against a real Label Studio: annotations made while samloop is down are learned.

``make run``'s setup (embedded Redis and worker). The project is connected, then samloop is stopped; two
annotations are made in Label Studio, whose webhooks find nobody (Label Studio logs the failure and never
sends them again). samloop starts again: its start-up recovery asks Label Studio, queues a run for the
project, and an adapter version becomes active without any webhook having reached samloop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

from tests.e2e import ls_api as api
from tests.e2e.label_studio import LabelStudioServer
from tests.e2e.samloop_backend import TIMINGS, SamloopBackend
from training.data.synthetic import SYNTHETIC_CLASSES, synthetic_dataset

pytestmark = pytest.mark.e2e

CLASSES = list(SYNTHETIC_CLASSES)
TRAIN_TIMEOUT_S = 600.0


def test_annotations_made_while_samloop_was_down_are_learned_after_its_start(
        label_studio: LabelStudioServer, samloop_factory: Callable[..., SamloopBackend]) -> None:
    backend = samloop_factory()
    dataset = synthetic_dataset(3, (240, 320), seed=5, prefix="missed")
    with label_studio.client(timeout=120) as client:
        project = api.create_project(client, api.brush_config(CLASSES, smart=False), title="samloop e2e missed")
        tasks = api.import_named_images(client, project["id"], [(s.name, s.image) for s in dataset.samples])
        ml = api.connect_ml_backend(client, project["id"], backend.url)
        assert ml["state"] == "CO", ml
        assert backend.active_version(project["id"]) is None

        backend.stop()
        for task, sample in list(zip(tasks, dataset.samples, strict=True))[:2]:
            result = [api.brush_result(sample.masks[c].astype(np.uint8), CLASSES[c])
                      for c in range(len(CLASSES)) if sample.masks[c].any()]
            api.create_annotation(client, task["id"], result)

    started = time.monotonic()
    backend.start()
    version = backend.wait_for_active_version(project["id"], TRAIN_TIMEOUT_S)
    TIMINGS["missed events: restart -> active version learned from annotations made while down"] = (
        time.monotonic() - started)
    assert version.endswith("-v1"), version
    events = backend.events(project["id"])
    assert not any(events.get(action) for action in ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED")), events
    assert "missed events recovered" in backend.log_text()
