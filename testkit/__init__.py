"""Helpers shared by the test suite and the benchmarks (never imported by product code).

- ``fake_label_studio``: a small Label Studio stand-in (projects, tasks, exports, uploads, tokens)
  served over real HTTP, for tests and ``make bench`` where a real Label Studio is not needed.
- ``ls_annotations``: what goes into it: annotation regions as the frontend stores them, label
  configs, PNG uploads, synthetic scenes with their true masks.
- ``locks``: ``file_lock``, for fixtures that build something once for several processes (a venv, a model).
- ``standin``: a pretrained stand-in for the official vit_t checkpoint (built once, cached) and two
  synthetic scene families, for learning tests and benchmarks on the path of a frozen encoder.
- ``standin_clicks``: the stand-in's optional clicks stage (SAM's simulated click sessions; off by default).
- ``waiting``: ``wait_for``, polling until a condition holds.
"""
