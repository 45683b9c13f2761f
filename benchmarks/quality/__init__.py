"""The quality benchmark: ``python -m benchmarks quality`` (``make bench-quality``).

How good samloop's masks are after 1, 2, 4, 8, 16 labeled images, per method, on one fixed held-out
set, and how many simulated clicks an annotator needs. Modules:

- ``data``: the labeled pool and the held-out set (synthetic stand-in scenes, or ``--data``), draws.
- ``methods``: the four methods (decoder adapter, encoder LoRA adapter, full fine-tune, promptless
  head baseline) trained and scored through ``training``'s own loop, evaluation and clicker.
- ``baseline``: the promptless head baseline (the only training code of its own here).
- ``cells``: one JSON file per (method, labeled images, repeat), reused by a rerun; peak memory.
- ``report``, ``plots``: the Markdown table, the JSON summary and the PNG learning curves.
- ``cli``: the command line.
"""
