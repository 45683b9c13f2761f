"""Learning: the training loop, its losses and options, and held-out evaluation.

- ``config``: ``TrainConfig`` (steps, time budget, learning rate, loss weights; checked on construction).
- ``losses``: focal, dice and IoU-prediction losses on masked logits.
- ``trainer``: ``train_adapter``, the loop (warmup + cosine, augmentation, budgets, early stop, progress).
- ``evaluation``: per-class IoU/Dice of promptless predictions on a dataset.

Imports ``training.model``, ``training.inference`` and ``training.data``.
"""
