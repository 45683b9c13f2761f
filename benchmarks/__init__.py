"""samloop benchmarks: what annotators and admins feel, measured through the real HTTP API.

``python -m benchmarks`` (``make bench``) starts the real backend (``python -m backend``) as a
subprocess per model variant, serves task images and exports from a Label Studio stand-in
(``testkit/fake_label_studio.py``), and measures:

- an annotator trace (open a task, 5 clicks with growing point sets, next task; then returns to
  earlier tasks) -> p50/p95 latency per kind of request;
- automatic pre-annotation of a batch of tasks with a 4-class adapter -> images/second;
- training: seconds from the triggering webhook to the new active adapter version;
- peak resident memory of the backend and of the training worker;
- the same figures for a naive baseline (cache of one image, one image per encoder call, fp32);
- micro-benchmarks of the hot spots (RLE encoding, decoder precision, JSON size).

Results go to ``benchmarks/results/latest.md`` and ``latest.json`` with the machine description.
Random weights (SAM_CHECKPOINT=random) are used: timings do not depend on the weights' values,
but masks of a random model are speckled, which makes RLE and JSON costs a worst case.
"""
