"""Side-by-side pictures of simulated clicks: [image | ground truth | SAM's decoder | the adapter].

One picture per held-out task, of one object: the task's largest (the one easiest to see). Each
decoder is clicked on by the protocol of ``training.learn.clicks`` (RITM's clicker, mask feedback), on
its own answers, as the NoC metrics click it, for ``clicks`` clicks (default 3, the middle report
click: past the ambiguous first click, before most objects are finished). Its panel shows its mask
after those clicks in the object's class colour, its clicks as dots (green positive, red negative) and,
in its label, the click count and IoU. The first click is the same for both decoders (the object's
most interior pixel); later ones correct each decoder's own mistakes, so they may differ, as an
annotator's would. Fewer clicks than asked means nothing was left to correct.

SAM's decoder is asked with the clicks alone, the adapter's with the object's class prompt, as
``training.learn.click_gate`` scores them. An adapter with its own encoder keeps no SAM decoder
(``SamAdapter.base_mask_decoder`` is None): callers pass ``sam=None`` and that panel says so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.dataset import SegmentationDataset
from training.drawing import DEFAULT_OPACITY, class_colour, draw_clicks, labelled_row, tint, write_png
from training.inference.predictor import ImageEmbedding, Predictor
from training.learn.clicks import Click, PredictFn, decoder_for, object_masks, simulate_object
from training.model.adapter import SamAdapter

DEFAULT_PICTURE_TASKS = 3
DEFAULT_PICTURE_CLICKS = 3
NO_SAM_DECODER = "no SAM decoder (own encoder)"
# How much of the image shows through a panel that has no decoder behind it.
_MISSING_PANEL_SHADE = 0.3


@dataclass(frozen=True)
class ClickDecoder:
    """A decoder the pictures click on: its name on the panel, and how it is asked."""

    name: str
    predictor: Predictor  # its ``clicks`` setting picks the decoder (``adapter`` or ``base``)
    embeddings: Sequence[ImageEmbedding]  # one per sample of the dataset pictured, under its encoder
    class_prompts: bool  # True: ask with the object's class name, as the backend asks an adapter


@dataclass(frozen=True)
class ClickedMask:
    """A decoder's answer after its clicks: H x W bool mask, the clicks ((x, y) pixels), its IoU."""

    clicks: list[Click]
    mask: np.ndarray
    iou: float


@dataclass(frozen=True)
class Comparison:
    """One written picture: the task, the object's class, and each decoder's result (None: no decoder)."""

    path: Path
    task: str
    class_name: str
    results: dict[str, ClickedMask | None]

    def to_dict(self) -> dict:
        """JSON-safe: the picture's path, the task and class, and per decoder its clicks and IoU (None:
        no such decoder)."""
        answers = {name: None if r is None else {"clicks": len(r.clicks), "iou": round(r.iou, 4)}
                   for name, r in self.results.items()}
        return {"picture": str(self.path), "task": self.task, "class": self.class_name, "decoders": answers}


def model_decoders(model: SamAdapter, embeddings: Sequence[ImageEmbedding], precision: str = "auto"
                   ) -> tuple[ClickDecoder, ClickDecoder | None]:
    """The adapter's decoder (class prompts) and SAM's (clicks alone), both on ``embeddings`` under
    ``model``'s encoder; SAM's is None when the adapter keeps none (its own encoder)."""
    adapter = ClickDecoder("adapter", Predictor(model, precision=precision, clicks="adapter"), embeddings, True)
    if model.base_mask_decoder is None:
        return adapter, None
    return adapter, ClickDecoder("SAM", Predictor(model, precision=precision, clicks="base"), embeddings, False)


def picture_tasks(dataset: SegmentationDataset, count: int = DEFAULT_PICTURE_TASKS) -> list[int]:
    """Indices of the first ``count`` samples of ``dataset`` with an object to click on."""
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"the number of pictures must be a positive integer, got {count!r}")
    found = [i for i, s in enumerate(dataset.samples) if object_masks(s.masks, dataset.class_names)]
    return found[:count]


def clicked_mask(predict: PredictFn, truth: np.ndarray, clicks: int = DEFAULT_PICTURE_CLICKS) -> ClickedMask:
    """``predict``'s mask after ``clicks`` simulated clicks on ``truth`` (H x W bool), or after fewer
    when no error pixel was left to click."""
    answers: list[np.ndarray] = []

    def recording(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        answers.append(predict(points, labels))
        return answers[-1]

    trace = simulate_object(recording, truth, max_clicks=clicks, report_clicks=(clicks,))
    return ClickedMask(trace.clicks, np.asarray(answers[-1], bool), trace.ious[len(trace.clicks) - 1])


def comparison_picture(image: np.ndarray, truth: np.ndarray, class_index: int, class_name: str,
                       results: dict[str, ClickedMask | None], opacity: float = DEFAULT_OPACITY) -> np.ndarray:
    """[image | truth | one panel per entry of ``results``], labelled (``training.drawing.labelled_row``).

    ``image`` H x W x 3 uint8 RGB, ``truth`` H x W bool; masks in class ``class_index``'s colour. A None
    result is a faded image labelled ``NO_SAM_DECODER``.
    """
    colour = class_colour(class_index)
    panels, labels = [image, tint(image, truth, colour, opacity)], ["image", f"truth: {class_name}"]
    for name, result in results.items():
        if result is None:
            faded = _MISSING_PANEL_SHADE * image + (1 - _MISSING_PANEL_SHADE) * 255
            panels.append(faded.astype(np.uint8))
            labels.append(NO_SAM_DECODER)
            continue
        panels.append(draw_clicks(tint(image, result.mask, colour, opacity), result.clicks))
        count = len(result.clicks)
        labels.append(f"{name}: {count} click{'s' * (count != 1)}, IoU {result.iou:.2f}")
    return labelled_row(panels, labels)


def _file_name(task: str, class_name: str, clicks: int) -> str:
    return re.sub(r"[^\w.-]+", "_", f"{task}-{class_name}-{clicks}clicks") + ".png"


def write_comparisons(dataset: SegmentationDataset, adapter: ClickDecoder, sam: ClickDecoder | None, folder: Path,
                      clicks: int = DEFAULT_PICTURE_CLICKS, opacity: float = DEFAULT_OPACITY) -> list[Comparison]:
    """One picture per sample of ``dataset`` that has an object (choose them with ``picture_tasks``):
    ``folder/<task>-<class>-<clicks>clicks.png``, [image | truth | SAM's decoder | the adapter's]."""
    for decoder in (adapter, sam):
        if decoder is not None and len(decoder.embeddings) != len(dataset):
            raise ValueError(f"{decoder.name}: {len(decoder.embeddings)} embeddings for {len(dataset)} samples")
    written = []
    for index, sample in enumerate(dataset.samples):
        objects = object_masks(sample.masks, dataset.class_names)
        if not objects:
            continue
        class_name, truth = max(objects, key=lambda found: int(found[1].sum()))
        sam_result = None if sam is None else _click(sam, index, class_name, truth, clicks)
        results = {"SAM" if sam is None else sam.name: sam_result,
                   adapter.name: _click(adapter, index, class_name, truth, clicks)}
        picture = comparison_picture(sample.image, truth, dataset.class_names.index(class_name), class_name,
                                     results, opacity)
        path = write_png(folder / _file_name(sample.name, class_name, clicks), picture)
        written.append(Comparison(path, sample.name, class_name, results))
    return written


def _click(decoder: ClickDecoder, index: int, class_name: str, truth: np.ndarray, clicks: int) -> ClickedMask:
    embedding = decoder.embeddings[index]
    predict = decoder_for(decoder.predictor, embedding, class_name if decoder.class_prompts else None)
    return clicked_mask(predict, truth, clicks)
