"""Training job outcomes counted in Redis as a cumulative histogram (what /metrics exposes)."""

from __future__ import annotations

import math
import uuid

import redis

from training.jobs.job_stats import DURATION_BUCKETS, read_stats, record_outcome


def test_outcomes_and_durations_add_up():
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    prefix = f"test-stats-{uuid.uuid4().hex[:8]}"
    try:
        for seconds in (0.5, 12.0, 90.0):
            record_outcome(client, prefix, "promoted", seconds)
        record_outcome(client, prefix, "cancelled", 4000.0)
        stats = read_stats(client, prefix)
    finally:
        client.delete(f"{prefix}:stats:training_jobs")
    assert set(stats) == {"promoted", "cancelled"}
    promoted = dict(stats["promoted"]["buckets"])
    assert stats["promoted"]["count"] == 3 and stats["promoted"]["sum"] == 102.5
    assert (promoted[1.0], promoted[15.0], promoted[60.0], promoted[120.0], promoted[math.inf]) == (1, 2, 2, 3, 3)
    cancelled = dict(stats["cancelled"]["buckets"])
    assert cancelled[3600.0] == 0 and cancelled[math.inf] == 1
    assert [b for b, _ in stats["promoted"]["buckets"]] == list(DURATION_BUCKETS)
