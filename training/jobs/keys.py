"""The Redis side of training coordination: each project's keys and the Lua scripts that change them.

Per project (keys ``<prefix>:train:<project>:*``):

- ``events``: a counter bumped by every accepted event; ``last_event``: when the last one came.
- ``queued``: the id of the job that will see the next events (at most one); ``queued_at``: when
  it was written (a job id whose rq hash isn't saved yet is being enqueued right now).
- ``lock``: held (with a TTL refreshed by a heartbeat thread) by the job that is training.
- ``done``: the event count covered by the last run that ended normally.
- ``claimed_at``: when the lock holder claimed (Redis time): its export sees Label Studio as of then.
- ``covered_until``: ``claimed_at`` of the last run that ended normally: annotations changed in Label
  Studio after it are not learned yet (``training.jobs.reconcile`` compares the two after an outage).
- ``last_run``: the last run's outcome as JSON.

Each script is one atomic step of the protocol (see ``training.jobs.scheduler``): its KEYS and
ARGV are listed above it. Times come from Redis' clock, which backend and workers on other
machines share.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CLAIM", "FINISH", "REFRESH", "RELEASE_QUEUED", "SCHEDULE", "ProjectKeys", "text"]


def text(value: bytes | str | None) -> str | None:
    """A reply of the bytes-mode client (rq's requirement) as text."""
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class ProjectKeys:
    prefix: str
    project: str

    def key(self, name: str) -> str:
        return f"{self.prefix}:train:{self.project}:{name}"

    @property
    def events(self) -> str:
        return self.key("events")

    @property
    def last_event(self) -> str:
        return self.key("last_event")

    @property
    def queued(self) -> str:
        return self.key("queued")

    @property
    def queued_at(self) -> str:
        return self.key("queued_at")

    @property
    def lock(self) -> str:
        return self.key("lock")

    @property
    def done(self) -> str:
        return self.key("done")

    @property
    def last_run(self) -> str:
        return self.key("last_run")

    @property
    def full(self) -> str:
        """Set while a retrain from scratch is asked for and no run has taken it yet."""
        return self.key("full")

    @property
    def claimed_at(self) -> str:
        return self.key("claimed_at")

    @property
    def covered_until(self) -> str:
        return self.key("covered_until")


# KEYS: events, last_event, queued, queued_at   ARGV: new job id, rq job key prefix, grace seconds, count (0/1)
# Returns {1, id} when the caller must enqueue job `id`, {0, id} when the event joined queued job `id`.
# A queued job still claims events in rq's states queued/started/scheduled/deferred.
SCHEDULE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if ARGV[4] == '1' then
  redis.call('INCR', KEYS[1])
  redis.call('SET', KEYS[2], string.format('%.6f', now))
end
local queued = redis.call('GET', KEYS[3])
if queued then
  local status = redis.call('HGET', ARGV[2] .. queued, 'status')
  if status == 'queued' or status == 'started' or status == 'scheduled' or status == 'deferred' then
    return {0, queued}
  end
  if not status then
    local at = tonumber(redis.call('GET', KEYS[4]) or '0')
    if now - at < tonumber(ARGV[3]) then
      return {0, queued}
    end
  end
end
redis.call('SET', KEYS[3], ARGV[1])
redis.call('SET', KEYS[4], string.format('%.6f', now))
return {1, ARGV[1]}
"""

# KEYS: queued   ARGV: job id
# Clears the queued pointer if it still names this job (its enqueue failed).
RELEASE_QUEUED = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
"""

# KEYS: queued, events, done, lock[, claimed_at]   ARGV: job id, lock ttl ms
# {0} when another job holds the lock (this job steps aside and stops being the queued one);
# {1, events, done} when this job now holds the lock and has claimed the events so far (at claimed_at).
CLAIM = """
local holder = redis.call('GET', KEYS[4])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
if holder and holder ~= ARGV[1] then
  return {0}
end
redis.call('SET', KEYS[4], ARGV[1], 'PX', ARGV[2])
if KEYS[5] then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[5], string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1000000))
end
return {1, tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(redis.call('GET', KEYS[3]) or '0')}
"""

# KEYS: lock   ARGV: job id, ttl ms
REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lock, done, events, queued[, claimed_at, covered_until]   ARGV: job id, claimed events, mark done (0/1)
# Returns 1 when events arrived during the run and no job is queued for them (a follow-up is due).
# covered_until moves only for the lock's holder: a job whose lock expired meanwhile covers nothing sure.
FINISH = """
local mine = redis.call('GET', KEYS[1]) == ARGV[1]
if mine then
  redis.call('DEL', KEYS[1])
end
if ARGV[3] == '1' then
  local done = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tonumber(ARGV[2]) > done then
    redis.call('SET', KEYS[2], ARGV[2])
  end
  if mine and KEYS[6] then
    local claimed = tonumber(redis.call('GET', KEYS[5]) or '0')
    if claimed > tonumber(redis.call('GET', KEYS[6]) or '0') then
      redis.call('SET', KEYS[6], redis.call('GET', KEYS[5]))
    end
  end
end
local events = tonumber(redis.call('GET', KEYS[3]) or '0')
if events > tonumber(ARGV[2]) and not redis.call('GET', KEYS[4]) then
  return 1
end
return 0
"""
