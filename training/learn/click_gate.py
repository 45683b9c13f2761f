"""Which decoder answers an adapter's clicks: its own, or SAM's, by simulated clicks on held-out masks.

Clicks never get worse than SAM: a frozen-encoder adapter keeps SAM's own decoder beside its trained
one (``SamAdapter.base_mask_decoder``); both are scored with the simulated clicker of
``training.learn.clicks`` on the same embeddings, and the adapter's decoder serves clicks only when
``clicks.compare`` says it is better. Without held-out tasks there is nothing fair to compare on
(the adapter has seen the training masks), so SAM's decoder keeps the clicks. An adapter with its own
encoder has no SAM decoder to fall back on (its embeddings are not SAM's): it always answers clicks.
"""

from __future__ import annotations

from collections.abc import Sequence

from training.data.dataset import SegmentationDataset
from training.inference.predictor import ImageEmbedding, Predictor
from training.learn.clicks import compare, evaluate_clicks
from training.model.adapter import SamAdapter


def click_gate(model: SamAdapter, holdout: SegmentationDataset, precision: str = "auto",
               embeddings: Sequence[ImageEmbedding] | None = None, max_clicks: int = 20) -> dict:
    """Score clicks on ``holdout`` for the adapter's decoder and (frozen encoder) SAM's, and choose one.

    Returns JSON-safe ``{"decoder": "adapter" | "base", "reason": str, "candidate": metrics | None,
    "base": metrics | None}`` (metrics as ``evaluate_clicks``).
    """
    if model.base_mask_decoder is None:
        return {"decoder": "adapter", "reason": "the adapter has its own encoder: its decoder answers clicks",
                "candidate": _score(model, holdout, precision, embeddings, max_clicks, "adapter"), "base": None}
    if not len(holdout):
        return {"decoder": "base", "reason": "no held-out tasks to compare clicks on: SAM's decoder keeps them",
                "candidate": None, "base": None}
    if embeddings is None:
        embeddings = Predictor(model, precision=precision).embed([s.image for s in holdout.samples], batch_size=1)
    candidate = _score(model, holdout, precision, embeddings, max_clicks, "adapter")
    base = _score(model, holdout, precision, embeddings, max_clicks, "base")
    better = candidate["objects"] > 0 and compare(candidate, base)
    reason = (f"simulated clicks on {candidate['objects']} held-out objects: NoC@90 {candidate['noc90']} "
              f"(adapter) vs {base['noc90']} (SAM)")
    return {"decoder": "adapter" if better else "base", "reason": reason, "candidate": candidate, "base": base}


def _score(model: SamAdapter, dataset: SegmentationDataset, precision: str,
           embeddings: Sequence[ImageEmbedding] | None, max_clicks: int, decoder: str) -> dict:
    predictor = Predictor(model, precision=precision, clicks=decoder)
    # SAM's decoder is asked like SAM (no class tokens); the adapter's with the annotator's label.
    return evaluate_clicks(predictor, dataset, max_clicks=max_clicks, class_prompts=decoder == "adapter",
                           embeddings=embeddings)
