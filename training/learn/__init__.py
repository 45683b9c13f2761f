"""Learning: the training loop, its losses and options, and held-out evaluation.

- ``config``: ``TrainConfig`` (steps, time budget, learning rate, loss weights; checked on construction).
- ``losses``: focal, dice and IoU-prediction losses on masked logits.
- ``embeddings``: base-encoder embeddings of training images, from the shared store or encoded once.
- ``trainer``: ``train_adapter``, the loop (warmup + cosine, augmentation, budgets, early stop, progress);
  a frozen-encoder adapter trains on stored embeddings and never runs the encoder in its loop.
- ``windows``: the window of an image's features (and targets) one training step decodes.
- ``evaluation``: per-class IoU/Dice of promptless predictions on a dataset.
- ``clicks``: simulated interactive clicks (the RITM / SimpleClick protocol), IoU@k, NoC@85/90 and NoF per object
  and dataset, and the rule that says when a decoder is better on clicks.
- ``comparisons``: pictures of those clicks, [image | truth | SAM's decoder | the adapter] after k clicks.

Imports ``training.model``, ``training.inference`` and ``training.data``.
"""
