"""Simulated interactive clicks and their metrics (NoC@85/90, NoF@90, IoU after k clicks).

This is the standard clicker and NoC protocol of the interactive-segmentation literature: RITM's
(``isegm/inference/clicker.py`` and ``evaluation.py``), which SimpleClick reuses unchanged.

- Error masks: the missed object pixels (false negatives, truth & ~prediction) and the wrongly included
  ones (false positives, prediction & ~truth), each as a whole, not split into connected regions.
- Distance: each error mask's exact Euclidean distance transform (OpenCV's ``DIST_L2`` with
  ``DIST_MASK_PRECISE``, as RITM calls it), on the mask padded by one zero pixel so the image edge counts
  as boundary, then cropped back. Pixels clicked before get distance 0: no pixel is clicked twice.
- Click: at the farthest pixel of the error mask with the larger maximum distance; positive in the missed
  pixels only when their maximum is strictly larger, so a tie goes negative. Among equal maxima, the first
  in row-major order (RITM takes ``np.where(...)[0]``).
- First click: the same rule against an empty prediction: positive at the object's most interior pixel.
- The model sees all clicks so far each round, and from the second click on the previous answer's
  low-resolution logits as its mask prompt (SAM's ``mask_input``; ``decoder_for``).
- At most 20 clicks (``DEFAULT_MAX_CLICKS``). NoC@t: the first click count with IoU >= t, 20 when never
  reached. NoF@90: the objects that never reach IoU 0.90 within the 20 clicks.

What differs from RITM's evaluation code; none of it changes NoC@85, NoC@90 or NoF@90:

- Stopping: RITM stops at IoU >= 0.90 (its default target); here clicking goes on up to the largest
  report click (IoU after 1, 3, 5 clicks is measured exactly) and past it stops at IoU >= 0.90. Later
  IoUs are the last one carried forward. NoC@85, NoC@90 and NoF@90 read IoUs only up to the first one
  >= 0.90, which is measured (and 0.85 is reached no later), so the stop leaves them as RITM's.
- When every error pixel has been clicked (or there is none), clicking stops and the IoU is carried
  forward; RITM would then click a negative at pixel (0, 0). A prediction equal to the truth has IoU 1
  already; otherwise this takes an object whose whole error was clicked pixel by pixel.
- NoF@90 counts objects that never reach 0.90, the papers' definition; RITM's table column (NoC == 20)
  also counts one that first reaches it at click 20.
- No ignore label: the masks here have no "ignore" pixels. The mask is the decoder's own (SAM: logits
  > 0), where RITM thresholds its probabilities at 0.49.

Coordinates: clicks are (x, y) integer pixels of the original image (column, row), the convention of
``Predictor.predict_prompt``. Masks are H x W bool.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import cv2
import numpy as np
import torch

from training.data.dataset import SegmentationDataset
from training.inference.predictor import ImageEmbedding, Predictor

# A decoder as the clicker sees it: (N x 2 (x, y) pixel points, N labels 1/0) -> H x W bool mask.
PredictFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

NOC_THRESHOLDS = (0.85, 0.90)
STOP_IOU = max(NOC_THRESHOLDS)
DEFAULT_MAX_CLICKS = 20
DEFAULT_REPORT_CLICKS = (1, 3, 5)
DEFAULT_MIN_AREA = 16
# Names the click rule in stored traces: traces from another rule (an older clicker) are not comparable.
CLICK_PROTOCOL = "ritm"


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

    def failed(self, threshold: float = STOP_IOU) -> bool:
        """Whether the object never reached ``threshold`` within the budget (counts towards NoF)."""
        return not any(iou >= threshold for iou in self.ious)


def _check_mask(mask: np.ndarray, what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{what} must be an H x W mask, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def _distance(error: np.ndarray) -> np.ndarray:
    """H x W float32: each pixel's exact Euclidean distance to the nearest pixel outside ``error`` (H x W
    bool), the image edge counting as outside; 0 outside ``error``."""
    padded = np.pad(error, 1).astype(np.uint8)
    # DIST_MASK_PRECISE with DIST_L2 is OpenCV's exact transform (Felzenszwalb-Huttenlocher); the others approximate.
    return cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]


def next_click(truth: np.ndarray, prediction: np.ndarray, clicked: Sequence[Click] = ()) -> Click | None:
    """RITM's correction click for ``prediction`` against ``truth`` (both H x W bool), see the module doc.

    ``clicked``: the clicks given so far; their pixels are never chosen again. None when no error pixel is
    left that was not clicked.
    """
    truth = _check_mask(truth, "truth")
    prediction = _check_mask(prediction, "prediction")
    if truth.shape != prediction.shape:
        raise ValueError(f"prediction is {prediction.shape}, truth is {truth.shape}")
    missed, extra = _distance(truth & ~prediction), _distance(prediction & ~truth)
    height, width = truth.shape
    for click in clicked:
        if not (0 <= click.x < width and 0 <= click.y < height):
            raise ValueError(f"{click} is outside the {width} x {height} image")
        missed[click.y, click.x] = extra[click.y, click.x] = 0.0
    missed_max, extra_max = float(missed.max()), float(extra.max())
    if missed_max == extra_max == 0.0:
        return None
    positive = missed_max > extra_max  # a tie goes negative, as in RITM
    distance = missed if positive else extra
    # argmax takes the first of equal maxima in row-major order, as RITM's np.where(...)[0] does.
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return Click(int(x), int(y), positive)


def first_click(truth: np.ndarray) -> Click:
    """The first click: ``next_click`` against an empty prediction, positive at the most interior pixel."""
    truth = _check_mask(truth, "truth")
    if not truth.any():
        raise ValueError("first_click needs a non-empty truth mask")
    # Nothing is wrongly included in an empty prediction, and a missed pixel is at distance >= 1: positive.
    return cast(Click, next_click(truth, np.zeros_like(truth)))


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

    Clicks follow ``next_click`` (RITM's rule). Stopping: clicks continue up to ``max(report_clicks)`` so
    those IoUs are measured, and past it only while IoU < 0.90 (an annotator stops once the mask is good;
    NoC@85/90 and NoF@90 need nothing more). No error pixel left to click also stops. Later entries of
    ``ious`` carry the last measured IoU forward. So ``ious`` is exact at every report click and up to the
    NoC@90 click, and ``number_of_clicks(ious, 0.85/0.90)`` and ``failed(0.90)`` are exact.
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
        click = None if done else next_click(truth, prediction, clicks)
        if click is None:
            break
        clicks.append(click)
    ious.extend([ious[-1]] * (max_clicks - len(ious)))
    return ObjectTrace(clicks, ious)


def decoder_for(predictor: Predictor, embedding: ImageEmbedding, class_name: str | None = None) -> PredictFn:
    """``predict(points, labels)`` through ``predictor.predict_prompt`` on one embedded image, for ONE object.

    ``class_name`` conditions the masks on that class's learned prompt when the predictor's adapter has
    it, as the backend does for an annotator's clicks; None asks SAM's decoder with the clicks alone.

    The decoder remembers its last answer: each call with more than one point passes the previous call's
    low-resolution logits (``PromptPrediction.low_res``, 1 x 4G x 4G) as ``mask_input``, the protocol's mask
    feedback. A call with one point is a first click and starts without a mask prompt. Build a fresh decoder
    for each object, so one object's mask never prompts another's.
    """
    previous: torch.Tensor | None = None

    def predict(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        nonlocal previous
        mask_input = previous if len(points) > 1 else None
        answer = predictor.predict_prompt(embedding, points, labels, box=None, class_name=class_name,
                                          mask_input=mask_input)
        previous = answer.low_res
        return answer.mask

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
    """``{"objects", "iou_at": {"k": mean IoU after k clicks}, "noc85", "noc90", "nof90"}``: means over
    objects (None without objects), and ``nof90`` the number of objects that never reached IoU 0.90."""
    if not traces:
        return {"objects": 0, "iou_at": {str(k): None for k in report}, "noc85": None, "noc90": None, "nof90": 0}
    ious = np.array([t.ious for t in traces], np.float64)
    return {
        "objects": len(traces),
        "iou_at": {str(k): float(ious[:, k - 1].mean()) for k in report},
        "noc85": float(np.mean([t.noc(0.85) for t in traces])),
        "noc90": float(np.mean([t.noc(0.90) for t in traces])),
        "nof90": sum(t.failed(0.90) for t in traces),
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
        "iou_at": {"k": mean IoU after k clicks}, "noc85": mean NoC@85, "noc90": mean NoC@90, "nof90":
        objects that never reach IoU 0.90, "per_class": {name: {"objects", "iou_at", "noc85", "noc90",
        "nof90"}}}``; means over objects, an object that never reaches a threshold counts as
        ``max_clicks``; None means when there is no object.
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
