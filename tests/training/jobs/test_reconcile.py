"""Issue 24: what training has covered (claim times kept by the run protocol), when Label Studio last saw an
annotation change (the fake Label Studio's export), and the decision between the two."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import redis

from testkit.fake_label_studio import FakeLabelStudio
from training.jobs.keys import ProjectKeys
from training.jobs.project_run import ProjectRun
from training.jobs.reconcile import Coverage, coverage, missed_reason, reconcile_project
from training.labelstudio.changes import ProjectGone, last_annotation_change
from training.labelstudio.client import LabelStudioSource, connect

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def conn() -> Iterator[tuple[redis.Redis, str]]:
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"test-reconcile-{uuid.uuid4().hex[:10]}"
    yield client, prefix
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)


def claimed_run(client: redis.Redis, prefix: str, project: str, job_id: str) -> ProjectRun:
    client.incr(ProjectKeys(prefix, project).events)
    run = ProjectRun(client, prefix, project, job_id, debounce_seconds=0, max_debounce_seconds=0)
    assert run.begin()
    return run


def test_a_normal_finish_covers_its_claim_time_and_a_failed_run_covers_nothing(conn):
    client, prefix = conn
    run = claimed_run(client, prefix, "7", "job-a")
    during = coverage(client, prefix, "7")
    assert during.running_since is not None and during.covered_until is None
    run.finish({"status": "trained"})
    after = coverage(client, prefix, "7")
    assert after.covered_until == during.running_since and after.running_since is None
    assert after.uncovered_events == 0

    failing = claimed_run(client, prefix, "7", "job-b")
    with pytest.raises(RuntimeError), failing.holding():
        raise RuntimeError("export failed")
    failed = coverage(client, prefix, "7")
    assert failed.covered_until == after.covered_until  # the failed run's claim covers nothing
    assert failed.uncovered_events == 1


NOW = 1_800_000_000.0


@pytest.mark.parametrize(("state", "change", "missed"), [
    (Coverage(None, None, False, 0), NOW, "never trained"),
    (Coverage(None, None, False, 0), None, None),  # nothing annotated
    (Coverage(NOW, None, False, 0), NOW - 10, None),  # learned by the last run
    (Coverage(NOW - 100, None, False, 0), NOW, "after the last claim"),
    (Coverage(NOW - 100, NOW, False, 0), NOW - 10, None),  # the running job saw it
    (Coverage(NOW - 100, NOW - 50, False, 0), NOW, "after the last claim"),  # it did not
    (Coverage(NOW - 100, None, True, 3), NOW, None),  # a waiting job will export after the outage
    (Coverage(NOW, None, False, 2), NOW - 10, "never covered"),  # a lost job
])
def test_missed_reason(state, change, missed):
    reason = missed_reason(state, change)
    assert (reason is None) if missed is None else (missed in reason)


def test_reconcile_schedules_only_a_project_that_missed_changes(conn):
    client, prefix = conn
    claimed_run(client, prefix, "7", "job-a").finish({"status": "trained"})
    covered = coverage(client, prefix, "7").covered_until
    scheduled: list[str] = []

    def schedule(project: str) -> dict:
        scheduled.append(project)
        return {"status": "queued"}

    quiet = reconcile_project(client, prefix, "7", lambda _: covered - 30, schedule)
    assert quiet["status"] == "up_to_date" and scheduled == []
    missed = reconcile_project(client, prefix, "7", lambda _: covered + 30, schedule)
    assert missed["status"] == "scheduled" and scheduled == ["7"]


@pytest.fixture
def ls() -> Iterator[FakeLabelStudio]:
    with FakeLabelStudio() as server:
        server.add_project(3, "<View/>", created_at="2024-04-05T19:34:38Z")
        server.add_project(4, "<View/>")
        server.add_task(3, {"image": "/data/upload/3/a.png"}, [
            {"result": [], "created_at": "2026-03-01T10:00:00Z", "updated_at": "2026-03-02T10:00:00Z"},
            {"result": [], "created_at": "2026-03-03T10:00:00Z", "updated_at": "2026-03-03T10:00:00Z"}])
        server.add_task(3, {"image": "/data/upload/3/b.png"}, [
            {"result": [], "created_at": "2026-02-01T10:00:00Z", "updated_at": "2026-03-05T12:00:00+00:00"}])
        server.add_task(3, {"image": "/data/upload/3/c.png"})  # not labeled
        yield server


def test_last_annotation_change_is_the_newest_annotation_time(ls):
    source = LabelStudioSource(ls.url, ls.legacy_token, retries=0)
    client = connect(source)
    newest = last_annotation_change(client, source, "3.1712345678")
    assert newest == datetime(2026, 3, 5, 12, tzinfo=UTC).timestamp()
    assert last_annotation_change(client, source, "3") == newest  # a bare id: no identity to check
    assert last_annotation_change(client, source, "4") is None  # nothing annotated
    with pytest.raises(ProjectGone, match="another project"):
        last_annotation_change(client, source, "3.1700000000")  # LS's project 3 is younger: someone else's
    with pytest.raises(ProjectGone, match="no project 9"):
        last_annotation_change(client, source, "9.1712345678")
