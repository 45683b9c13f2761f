"""Simulated interactive clicks and their metrics (NoC@85/90, IoU after k clicks).

The clicker is the one of the interactive-segmentation literature (RITM, SimpleClick), with one
documented difference below:

- First click: positive, at the object's interior point farthest from its border (Euclidean distance
  transform of the mask padded by one zero pixel, so the image edge counts as border).
- Each next click: at the centre (the point farthest from its border, same rule) of the largest
  connected error region (8-connectivity) of the current prediction against the truth: positive when
  that region is missed foreground (false negative), negative when it is false positive. RITM picks
  between the two error maps by their largest distance value; here the larger region (in pixels)
  wins, as the issue asks. Ties: the larger region, then false negatives before false positives, then
  OpenCV's component order; among equally distant centre points the one nearest their mean, then
  the first in row-major order. The same masks always give the same click.
- The model sees all clicks so far each round, as an annotator's clicks reach Label Studio's /predict.

Coordinates: clicks are (x, y) integer pixels of the original image (column, row), the convention of
``Predictor.predict_prompt``. Masks are H x W bool.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from training.data.dataset import SegmentationDataset
from training.inference.predictor import ImageEmbedding, Predictor

# A decoder as the clicker sees it: (N x 2 (x, y) pixel points, N labels 1/0) -> H x W bool mask.
PredictFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

NOC_THRESHOLDS = (0.85, 0.90)
STOP_IOU = max(NOC_THRESHOLDS)
DEFAULT_MAX_CLICKS = 20
DEFAULT_REPORT_CLICKS = (1, 3, 5)
DEFAULT_MIN_AREA = 16


@dataclass(frozen=True)
class Click:
    """One simulated click: (x, y) pixel of the original image; positive adds, negative removes."""

    x: int
    y: int
    positive: bool


@dataclass
class ObjectTrace:
    """The clicks given to one object and its IoU after each click.

    ``ious`` has ``max_clicks`` entries: ``ious[k - 1]`` is the IoU after k clicks. Entries after the
    last click (``len(clicks)``) carry the last measured IoU forward (see ``simulate_object``).
    """

    clicks: list[Click]
    ious: list[float]

    def noc(self, threshold: float) -> int:
        return number_of_clicks(self.ious, threshold)


def _check_mask(mask: np.ndarray, what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{what} must be an H x W mask, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def interior_point(region: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of ``region`` (H x W bool, non-empty) farthest from its border.

    The region is padded by one background pixel first, so pixels on the image edge are at distance 1.
    Ties: the maximum nearest the mean of all maxima, then the first in row-major order.
    """
    region = _check_mask(region, "region")
    if not region.any():
        raise ValueError("interior_point needs a non-empty region")
    padded = np.pad(region, 1).astype(np.uint8)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    ys, xs = np.nonzero(distance == distance.max())
    if len(ys) > 1:
        offsets = (ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2
        best = int(np.argmin(offsets))  # argmin returns the first of equal values: row-major order
    else:
        best = 0
    return int(xs[best]), int(ys[best])


def first_click(truth: np.ndarray) -> Click:
    """The positive click at the object's most interior point."""
    x, y = interior_point(truth)
    return Click(x, y, True)


def _largest_component(error: np.ndarray) -> tuple[int, np.ndarray | None]:
    """(area, H x W bool) of the largest 8-connected component of ``error``; (0, None) when empty."""
    if not error.any():
        return 0, None
    count, labels, stats, _ = cv2.connectedComponentsWithStats(error.astype(np.uint8), connectivity=8)
    areas = stats[1:count, cv2.CC_STAT_AREA]
    label = 1 + int(np.argmax(areas))  # first of equal areas: OpenCV's (deterministic) label order
    return int(areas[label - 1]), labels == label


def next_click(truth: np.ndarray, prediction: np.ndarray) -> Click | None:
    """The correction click for ``prediction`` against ``truth`` (both H x W bool); None when they agree."""
    truth = _check_mask(truth, "truth")
    prediction = _check_mask(prediction, "prediction")
    if truth.shape != prediction.shape:
        raise ValueError(f"prediction is {prediction.shape}, truth is {truth.shape}")
    fn_area, fn_region = _largest_component(truth & ~prediction)
    fp_area, fp_region = _largest_component(prediction & ~truth)
    if fn_region is None and fp_region is None:
        return None
    positive = fn_area >= fp_area  # equal areas: the missed foreground first
    x, y = interior_point(fn_region if positive else fp_region)
    return Click(x, y, positive)


def _iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two H x W bool masks; 1.0 when both are empty."""
    union = int(np.logical_or(prediction, truth).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(prediction, truth).sum()) / union


def number_of_clicks(ious: Sequence[float], threshold: float) -> int:
    """NoC: the first k (1-based) with ``ious[k - 1] >= threshold``; ``len(ious)`` when never reached.

    Counting an object that never reaches the threshold as ``max_clicks`` is the standard convention
    (RITM's ``compute_noc_metric``): NoC@90 with max_clicks 20 is at most 20.
    """
    for k, iou in enumerate(ious, start=1):
        if iou >= threshold:
            return k
    return len(ious)


def _check_clicks(max_clicks: int, report_clicks: Sequence[int]) -> tuple[int, ...]:
    if not isinstance(max_clicks, int) or max_clicks < 1:
        raise ValueError(f"max_clicks must be a positive integer, got {max_clicks!r}")
    report = tuple(report_clicks)
    bad = [k for k in report if not isinstance(k, int) or not 1 <= k <= max_clicks]
    if bad:
        raise ValueError(f"report_clicks {bad} are not integers in 1..max_clicks ({max_clicks})")
    return report


def simulate_object(predict: PredictFn, truth: np.ndarray, max_clicks: int = DEFAULT_MAX_CLICKS,
                    report_clicks: Sequence[int] = DEFAULT_REPORT_CLICKS) -> ObjectTrace:
    """Click on one object until it is done, asking ``predict`` with all clicks so far each round.

    Args:
        predict: ``predict(points, labels) -> H x W bool``; points N x 2 float32 (x, y) pixels, labels
            N int64 (1 positive, 0 negative). ``decoder_for`` builds one from a Predictor; any other
            callable (the base decoder, a test oracle) works the same.
        truth: H x W bool, the object's mask.
        max_clicks: the click budget; NoC of an object that never reaches a threshold is this number.
        report_clicks: click counts whose IoU is reported; they bound the stopping rule.

    Stopping: clicks continue up to ``max(report_clicks)`` so those IoUs are measured, and past it only
    while IoU < 0.90 (an annotator stops once the mask is good; NoC@85/90 need nothing more). A
    prediction equal to the truth also stops (no error region is left to click). Later entries of
    ``ious`` carry the last measured IoU forward. So ``ious`` is exact at every report click and up to
    the NoC@90 click, and ``number_of_clicks(ious, 0.85/0.90)`` is exact.
    """
    report = _check_clicks(max_clicks, report_clicks)
    truth = _check_mask(truth, "truth")
    must_reach = max(report, default=0)
    clicks = [first_click(truth)]
    ious: list[float] = []
    while True:
        points = np.array([[c.x, c.y] for c in clicks], np.float32)
        labels = np.array([int(c.positive) for c in clicks], np.int64)
        prediction = _check_mask(predict(points, labels), "predict's mask")
        if prediction.shape != truth.shape:
            raise ValueError(f"predict returned a {prediction.shape} mask for a {truth.shape} object")
        ious.append(_iou(prediction, truth))
        done = len(clicks) >= max_clicks or (len(clicks) >= must_reach and ious[-1] >= STOP_IOU)
        click = None if done else next_click(truth, prediction)
        if click is None:
            break
        clicks.append(click)
    ious.extend([ious[-1]] * (max_clicks - len(ious)))
    return ObjectTrace(clicks, ious)


def decoder_for(predictor: Predictor, embedding: ImageEmbedding, class_name: str | None = None) -> PredictFn:
    """``predict(points, labels)`` through ``predictor.predict_prompt`` on one embedded image.

    ``class_name`` conditions the masks on that class's learned prompt when the predictor's adapter has
    it, as the backend does for an annotator's clicks; None asks SAM's decoder with the clicks alone.
    """

    def predict(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return predictor.predict_prompt(embedding, points, labels, box=None, class_name=class_name).mask

    return predict


def object_masks(masks: np.ndarray, class_names: Sequence[str], instances: bool = False,
                 min_area: int = DEFAULT_MIN_AREA) -> list[tuple[str, np.ndarray]]:
    """The objects of one sample to click on: (class name, H x W bool) pairs in class order.

    ``masks`` is C x H x W bool. With ``instances=False`` (default) each non-empty class plane is one
    object, however many pieces it has (the clicker then has to find the other pieces); with
    ``instances=True`` each 8-connected piece is its own object. Objects under ``min_area`` pixels
    are skipped (a few stray pixels are not something an annotator clicks on).
    """
    if not isinstance(min_area, int) or min_area < 1:
        raise ValueError(f"min_area must be a positive integer, got {min_area!r}")
    if masks.ndim != 3 or masks.shape[0] != len(class_names):
        raise ValueError(f"masks of shape {masks.shape} do not match {len(class_names)} classes")
    objects = []
    for name, plane in zip(class_names, masks, strict=True):
        plane = plane.astype(bool, copy=False)
        if instances:
            count, labels = cv2.connectedComponents(plane.astype(np.uint8), connectivity=8)
            pieces = [labels == k for k in range(1, count)]
        else:
            pieces = [plane]
        objects.extend((name, piece) for piece in pieces if int(piece.sum()) >= min_area)
    return objects


def summarize(traces: list[ObjectTrace], report: Sequence[int]) -> dict:
    """Means over objects: ``{"objects", "iou_at": {"k": IoU after k clicks}, "noc85", "noc90"}``."""
    if not traces:
        return {"objects": 0, "iou_at": {str(k): None for k in report}, "noc85": None, "noc90": None}
    ious = np.array([t.ious for t in traces], np.float64)
    return {
        "objects": len(traces),
        "iou_at": {str(k): float(ious[:, k - 1].mean()) for k in report},
        "noc85": float(np.mean([t.noc(0.85) for t in traces])),
        "noc90": float(np.mean([t.noc(0.90) for t in traces])),
    }


def evaluate_clicks(predictor: Predictor, dataset: SegmentationDataset, max_clicks: int = DEFAULT_MAX_CLICKS,
                    report_clicks: Sequence[int] = DEFAULT_REPORT_CLICKS, instances: bool = False,
                    min_area: int = DEFAULT_MIN_AREA, class_prompts: bool = True,
                    embeddings: Sequence[ImageEmbedding] | None = None) -> dict:
    """Simulated clicks on every object of ``dataset`` (see ``simulate_object``, ``object_masks``).

    Args:
        predictor: embeds the images and answers the clicks (``predict_prompt``). To measure another
            decoder on the same images, pass a Predictor over that model (e.g. the base model for SAM's
            own decoder), with ``embeddings`` from the first run when the encoders are the same.
        max_clicks, report_clicks: the click budget and the click counts whose mean IoU is reported.
        instances, min_area: which masks are objects (``object_masks``).
        class_prompts: pass each object's class name to ``predict_prompt`` as the backend does with an
            annotator's label (the adapter's class prompt joins the clicks when it knows that class);
            False asks with the clicks alone (plain SAM: use it for a base model, whose class prompts are
            random).
        embeddings: one per sample, already computed (the embedding store, or shared between the base
            and a candidate decoder); None embeds each image that has an object once, one at a time.

    Returns:
        JSON-safe ``{"objects": n, "images": number of images with an object, "max_clicks": m,
        "iou_at": {"k": mean IoU after k clicks}, "noc85": mean NoC@85, "noc90": mean NoC@90,
        "per_class": {name: {"objects", "iou_at", "noc85", "noc90"}}}``; means over objects, an object
        that never reaches a threshold counts as ``max_clicks``; None means when there is no object.
    """
    report = _check_clicks(max_clicks, report_clicks)
    if embeddings is not None and len(embeddings) != len(dataset):
        raise ValueError(f"{len(embeddings)} embeddings for {len(dataset)} samples")
    traces: dict[str, list[ObjectTrace]] = {name: [] for name in dataset.class_names}
    images = 0
    for index, sample in enumerate(dataset.samples):
        objects = object_masks(sample.masks, dataset.class_names, instances, min_area)
        if not objects:
            continue
        images += 1
        embedding = predictor.embed([sample.image])[0] if embeddings is None else embeddings[index]
        for name, truth in objects:
            predict = decoder_for(predictor, embedding, name if class_prompts else None)
            traces[name].append(simulate_object(predict, truth, max_clicks, report))
    result = summarize([t for per_class in traces.values() for t in per_class], report)
    result.update({
        "images": images,
        "max_clicks": max_clicks,
        "per_class": {name: summarize(found, report) for name, found in traces.items() if found},
    })
    return result


def compare(candidate: dict, base: dict, tolerance: float = 1e-9) -> bool:
    """Whether ``candidate``'s decoder is better on clicks than ``base``'s (both ``evaluate_clicks`` results).

    Rule: a lower mean NoC@90 wins; at an equal NoC@90 (within ``tolerance``) a higher mean IoU after one
    click wins; anything else (equal on both, or no objects) is not better, so the base is kept.

    Raises:
        ValueError: the results were measured differently (object counts, max_clicks) or lack IoU@1.
    """
    for key in ("objects", "max_clicks"):
        if candidate.get(key) != base.get(key):
            raise ValueError(f"results differ in {key!r}: {candidate.get(key)!r} vs {base.get(key)!r}")
    if "1" not in candidate.get("iou_at", {}) or "1" not in base.get("iou_at", {}):
        raise ValueError("compare needs IoU after 1 click: include 1 in report_clicks")
    if not candidate["objects"]:
        return False
    noc_c, noc_b = candidate["noc90"], base["noc90"]
    if not (math.isfinite(noc_c) and math.isfinite(noc_b)):
        raise ValueError(f"NoC@90 must be finite, got {noc_c!r} and {noc_b!r}")
    if noc_c < noc_b - tolerance:
        return True
    return abs(noc_c - noc_b) <= tolerance and candidate["iou_at"]["1"] > base["iou_at"]["1"] + tolerance
