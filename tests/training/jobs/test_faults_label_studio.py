"""Issue 24, faults: Label Studio down while a run exports (nothing listens on its port). The job retries,
then fails without touching the active adapter or the version list, frees the project, and the next
event, with Label Studio back, trains a new version.

Real rq on a private Redis, the fake Label Studio, vit_t with random weights at 64 px.
"""

from __future__ import annotations

from rq.job import Job

from tests.backend.conftest import free_port
from tests.training.jobs.test_training_job import (  # noqa: F401 - fixtures
    PROJECT,
    conn,
    ls,
    make_scheduler,
    registry,
    run_queue,
    settings_for,
)
from training.model.loading import new_adapter_model
from training.model.weights import resolve_checkpoint


def test_label_studio_down_during_the_export_keeps_the_active_adapter_and_the_next_event_trains(
        conn, ls, tmp_path):  # noqa: F811
    store = registry(tmp_path)
    store.publish(PROJECT, new_adapter_model(resolve_checkpoint("vit_t", "random"), 64, ["disc", "box"]).to_bytes(),
                  {"note": "before"})
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    sched = make_scheduler(conn, settings_for(ls, tmp_path, label_studio_url=down))
    queued = sched.schedule(PROJECT, "ANNOTATION_CREATED", False)
    run_queue(conn)  # the run and its retry
    job = Job.fetch(queued["job_id"], connection=conn)
    assert job.get_status() == "failed"
    assert "no response" in job.latest_result().exc_string and down in job.latest_result().exc_string
    assert [v.version for v in store.versions(PROJECT)] == [1] and store.active_version(PROJECT) == 1
    status = sched.status(PROJECT)
    assert status["last_run"]["status"] == "failed" and status["running_job"] is None

    back = make_scheduler(conn, settings_for(ls, tmp_path))
    again = back.schedule(PROJECT, "ANNOTATION_CREATED", False)
    assert again["status"] == "queued", again  # the failed job does not swallow the next event
    run_queue(conn)
    assert Job.fetch(again["job_id"], connection=conn).get_status() == "finished"
    assert [v.version for v in store.versions(PROJECT)] == [1, 2]
