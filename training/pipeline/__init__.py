"""One training run, the same for the rq job and the offline CLI: sync -> split -> plan -> train -> judge -> publish.

- ``settings``: ``JobSettings``, everything a run needs, JSON-safe, from the environment or the backend
  (imports no torch: the scheduler and the backend check settings without the model code).
- ``holdout``: the held-out set, stable across runs and capped, class by class.
- ``history``: what the project's published versions tell the next run (data, held-out scores, clicks).
- ``scores``: held-out scores kept per task, dataset-level IoU from them, the noise and the mask gate.
- ``training_set``: training data straight from the task cache, and the new/replay batch mix.
- ``click_check``: the click gate on a bounded, stable sample, with SAM's traces computed once per task.
- ``models``: base models kept in memory between runs of a worker process.
- ``stages``: the models a run starts from, its step plan and held-out scoring.
- ``run``: ``run_project``, the run itself, and its outcome.

Imports ``training.model``, ``training.inference``, ``training.data``, ``training.learn``,
``training.labelstudio`` and ``training.registry``; ``training.jobs`` and the CLI import it.
"""
