"""The admin console's controls on the scheduler: train now (no debounce wait, auto-training or not) and
cancel, on a private real Redis with the stand-in job of ``test_scheduler``."""

from __future__ import annotations

import time

from rq import Queue, SimpleWorker
from rq.job import Job

from tests.training.jobs import test_scheduler as base
from tests.training.jobs.test_scheduler import QUEUE, runs, scheduler
from training.jobs.job_stats import read_stats

# The private redis-server fixtures of the scheduler's own tests (module-level there, not in a conftest).
redis_url = base.redis_url
conn = base.conn


def test_train_now_does_not_wait_out_the_debounce(conn):
    sched = scheduler(conn, debounce_seconds=20.0, max_debounce_seconds=40.0,
                      auto_training_enabled=lambda project: False)
    assert sched.schedule("3", "ANNOTATION_CREATED", False)["status"] == "ignored"  # auto-training is off
    queued = sched.train_now("3")
    assert queued["status"] == "queued" and sched.train_now("3") == {**queued, "status": "coalesced"}
    started = time.monotonic()
    SimpleWorker([Queue(QUEUE, connection=conn)], connection=conn).work(burst=True)
    assert time.monotonic() - started < 10  # a 20 s debounce would have held it
    assert [(r["project"], r["claimed"]) for r in runs(conn)] == [("3", 2)]
    assert read_stats(conn, "samloop")["promoted"]["count"] == 1  # counted by the success callback


def test_cancel_a_queued_job(conn):
    sched = scheduler(conn)
    job_id = sched.train_now("4")["job_id"]
    assert sched.cancel("4") == {"status": "cancelled", "project": "4", "stopped": [], "cancelled": [job_id]}
    assert Job.fetch(job_id, connection=conn).get_status().value == "canceled"
    assert sched.status("4")["queued_job"] is None and sched.current_job("4") is None
    assert read_stats(conn, "samloop")["cancelled"]["count"] == 1
    SimpleWorker([Queue(QUEUE, connection=conn)], connection=conn).work(burst=True)
    assert runs(conn) == []
    # The events stay due: the next trigger makes a new job that claims them.
    assert sched.train_now("4")["job_id"] != job_id
    assert sched.cancel("5")["status"] == "nothing_to_cancel"
