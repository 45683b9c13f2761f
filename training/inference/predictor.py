"""Inference with a SamAdapter: image embeddings, promptless class masks and prompted masks."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from training.data.images import ReducedImage
from training.inference import runtime
from training.inference.click_memory import ClickMemory
from training.inference.compiled_decoder import CompiledDecoder
from training.inference.projection_cache import cache_image_projections, decoding, plain_copy
from training.model.adapter import SamAdapter
from training.model.features import ImageFeatures

# Class maps are resolved at most at this many times the model's input area, then resized
# nearest-neighbour to the original: bounds memory for huge images at a small cost in edge detail.
MAX_RESOLVE_AREA_FACTOR = 4
# Which decoder answers clicks: the adapter's, or SAM's own (see SamAdapter.base_mask_decoder).
CLICK_DECODERS = ("adapter", "base")


@dataclass
class ImageEmbedding:
    """One image's encoder output and the geometry needed to map masks back."""

    embedding: torch.Tensor  # 1 x 256 x G x G
    input_size: tuple[int, int]  # (h, w) in the model's input frame (after the resize, before padding)
    original_size: tuple[int, int]  # (H, W) of the image as given
    high_res: tuple[torch.Tensor, ...] = ()  # the family's finer maps (SAM 2: 1 x 32 x 4G x 4G, 1 x 64 x 2G x 2G)

    @property
    def features(self) -> ImageFeatures:
        return ImageFeatures(self.embedding, tuple(self.high_res))

    @property
    def nbytes(self) -> int:
        return self.features.nbytes


@dataclass
class ClassPrediction:
    """Per-pixel class map for one image.

    label_map: H x W uint8 (original resolution); 0 is background, k is ``class_names[k-1]``.
    scores: class name -> confidence in [0, 1] (mean probability inside its region times the
        decoder's predicted IoU), only for classes with a non-empty region.
    """

    class_names: list[str]
    label_map: np.ndarray
    scores: dict[str, float]

    def mask(self, class_name: str) -> np.ndarray:
        return self.label_map == self.class_names.index(class_name) + 1


@dataclass
class PromptPrediction:
    mask: np.ndarray  # H x W bool, original resolution
    score: float  # the decoder's predicted IoU
    # 1 x 4G x 4G logits of the chosen mask: the next click's mask prompt (simulated clicks; SAM 2 always)
    low_res: torch.Tensor | None = None


class Predictor:
    """Stateless inference helpers over a SamAdapter (callers hold any locks and caches).

    ``channels_last=True`` switches the image encoder's weights to the channels-last memory
    format (in place, on the shared model) and feeds it channels-last batches: oneDNN's CPU
    convolutions skip their layout reorders then (vit_t encoder ~25% faster on CPU, fp32 and bf16;
    same outputs within float rounding). For long-lived inference models, not for a model in training.

    ``threads``: intra-op threads per call on CPU. None: torch's setting. ``"free"``: torch's setting
    capped, at each call, to the cores no other process is running on right now (Linux, from
    /proc). Every op is a parallel region that waits for all its threads: when another process (a
    training worker) keeps the cores busy, a second thread that the kernel has descheduled made a
    click 10-70x slower than one thread on a 2-core machine, while on idle cores 2 threads are ~1.8x
    faster than one (benchmarks/hotspots.py).

    ``clicks``: which decoder answers ``predict_prompt`` by default, ``adapter`` or ``base`` (SAM's own).

    ``compiled``: answers ``predict_prompt``'s decoder calls (compiled once warm: ``warm_compiled_clicks``);
    None: the eager decoders.
    """

    def __init__(self, model: SamAdapter, precision: str = "auto", threshold: float = 0.5,
                 channels_last: bool = False, threads: int | str | None = None, clicks: str = "adapter",
                 compiled: CompiledDecoder | None = None) -> None:
        if clicks not in CLICK_DECODERS:
            raise ValueError(f"clicks must be one of {', '.join(CLICK_DECODERS)}, got {clicks!r}")
        if not (threads is None or threads == "free" or (isinstance(threads, int) and threads >= 1)):
            raise ValueError(f"threads must be None, 'free' or a positive integer, got {threads!r}")
        self.model = model
        self.autocast = runtime.autocast_dtype(model.device, precision)
        self.threshold = threshold
        self.channels_last = channels_last
        self.threads = threads
        self.clicks = clicks
        self.max_threads = torch.get_num_threads()
        if channels_last:
            model.sam.image_encoder.to(memory_format=torch.channels_last)
        # Families that feed the previous mask back (SAM 2) remember each click sequence's last mask.
        self.click_memory = ClickMemory() if model.family.feeds_back_mask else None
        # Only families whose ``predict_masks`` traces without breaks are compiled (Family.compilable).
        self.compiled = compiled if model.family.compilable else None
        projections = model.family.image_only_projections
        # The compiled path runs SAM's decoder from a copy without the projection reuse below (see plain_copy).
        # SAM's own decoder never changes: compiled with its weights folded in (CompiledDecoder.fixed).
        self._base_twin = (self.compiled.fixed(plain_copy(model.base_mask_decoder, projections))
                           if self.compiled is not None and model.base_mask_decoder is not None else None)
        if model.base_mask_decoder is not None:
            # Clicks answered by SAM's own decoder reuse its image-only first-block projections.
            cache_image_projections(model.base_mask_decoder, projections)

    def _autocast(self):
        if self.autocast is None:
            return torch.autocast(self.model.device.type, enabled=False)
        # Without autocast's weight-cast cache: it only helps weights that require grad (LoRA), used once
        # per pass here, and it casts under a mutex. Dynamo tracing the compiled decoder in a background
        # thread dispatches those casts to Python (fake tensors) while holding that mutex; a request
        # thread leaving autocast clears the cache under the same mutex while holding the GIL: deadlock.
        return torch.autocast(self.model.device.type, dtype=self.autocast, cache_enabled=False)

    def _threads(self) -> AbstractContextManager:
        if self.threads is None or self.model.device.type != "cpu":
            return nullcontext()
        count = self.threads if isinstance(self.threads, int) else min(self.max_threads, runtime.free_cores())
        if self.compiled is not None:  # a count the compiled decoder was warmed for
            count = runtime.round_down(count, self.thread_counts())
        return runtime.intra_op_threads(count)

    def thread_counts(self) -> tuple[int, ...]:
        """Intra-op thread counts calls may run with (on CPU): each is a compiled decoder graph."""
        if isinstance(self.threads, int):
            return (self.threads,)
        return runtime.thread_steps(self.max_threads) if self.threads == "free" else (self.max_threads,)

    def embed(self, images: list[np.ndarray | ReducedImage], batch_size: int = 4) -> list[ImageEmbedding]:
        """Encode H x W x 3 uint8 RGB images, ``batch_size`` at a time. A ``ReducedImage`` (decoded at a
        reduced scale) keeps its full size as the embedding's ``original_size``: masks come out at it."""
        with self._threads():
            return self._embed(images, batch_size)

    @torch.inference_mode()
    def _embed(self, images: list[np.ndarray | ReducedImage], batch_size: int) -> list[ImageEmbedding]:
        out: list[ImageEmbedding] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            prepared = [self.model.preprocess(_pixels(image)) for image in chunk]
            batch = torch.stack([tensor for tensor, _ in prepared]).to(self.model.device)
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                features = self.model.encode(batch).float()
            for index, (image, (_, input_size)) in enumerate(zip(chunk, prepared, strict=True)):
                one = features.item(index).map(torch.clone)
                out.append(ImageEmbedding(one.embedding, input_size, _original_size(image), one.high_res))
        return out

    def predict_classes(self, image: ImageEmbedding, class_names: list[str] | None = None) -> ClassPrediction:
        """Promptless masks for ``class_names`` (default all adapter classes), resolved per pixel."""
        with self._threads():
            return self._predict_classes(image, class_names)

    @torch.inference_mode()
    def _predict_classes(self, image: ImageEmbedding, class_names: list[str] | None) -> ClassPrediction:
        names = list(self.model.class_names if class_names is None else class_names)
        unknown = [n for n in names if n not in self.model.class_names]
        if unknown:
            raise ValueError(f"classes {unknown} are not in the adapter's classes {self.model.class_names}")
        if not names:
            return ClassPrediction([], np.zeros(image.original_size, np.uint8), {})
        indices = [self.model.class_names.index(n) for n in names]
        with self._autocast():
            low_res, iou = self.model.class_logits(image.features.to(self.model.device), indices)
        work_size = _resolve_size(image.original_size, self.model.image_size)
        probs = torch.sigmoid(self.model.upscale(low_res.float(), image.input_size, work_size))
        best_prob, best = probs.max(dim=0)
        labels = torch.where(best_prob > self.threshold, best + 1, torch.zeros_like(best)).to(torch.uint8)
        label_map = labels.cpu().numpy()
        if work_size != image.original_size:
            import cv2  # local: only huge images take this path

            label_map = cv2.resize(label_map, image.original_size[::-1], interpolation=cv2.INTER_NEAREST)
        scores = {}
        for k, name in enumerate(names):
            region = labels == k + 1
            if bool(region.any()):
                confidence = float(probs[k][region].mean())
                scores[name] = confidence * float(iou[k, 0].clamp(0, 1))
        return ClassPrediction(names, label_map, scores)

    def predict_prompt(self, image: ImageEmbedding, points: np.ndarray | None = None,
                       point_labels: np.ndarray | None = None, box: np.ndarray | None = None,
                       class_name: str | None = None, decoder: str | None = None,
                       mask_input: torch.Tensor | None = None) -> PromptPrediction:
        """One mask from positive/negative points and/or a box.

        Args:
            points: N x 2 (x, y) pixels in the original image.
            point_labels: N values, 1 positive, 0 negative.
            box: (x0, y0, x1, y1) pixels in the original image.
            class_name: conditions the mask on that class's learned prompt when the adapter has it.
            decoder: ``adapter`` (the adapter's decoder) or ``base`` (SAM's own, without class tokens);
                None: the predictor's ``clicks`` setting.
            mask_input: a previous prediction's ``low_res`` on this image (1 x 4G x 4G logits), fed back as the
                decoder's mask prompt (every family; the simulated clicker passes it from its second click on).
                None: no mask prompt, except in families that feed the previous mask back (SAM 2), which then
                take the mask this predictor gave for the same prompts without the last point, if it answered
                them recently (``ClickMemory``).
        """
        decoder = decoder or self.clicks
        if decoder not in CLICK_DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(CLICK_DECODERS)}, got {decoder!r}")
        with self._threads():
            if self.click_memory is None:
                return self._predict_prompt(image, points, point_labels, box, class_name, decoder == "base",
                                            mask_input)
            points = None if points is None else np.asarray(points, dtype=np.float32).reshape(-1, 2)
            extra = (class_name, decoder)
            if mask_input is None:
                mask_input = self.click_memory.previous(image.embedding, points, point_labels, box, extra)
            out = self._predict_prompt(image, points, point_labels, box, class_name, decoder == "base", mask_input)
            self.click_memory.remember(image.embedding, points, point_labels, box, out.low_res, extra)
            return out

    @torch.inference_mode()
    def _predict_prompt(self, image: ImageEmbedding, points: np.ndarray | None, point_labels: np.ndarray | None,
                        box: np.ndarray | None, class_name: str | None, base: bool,
                        mask_input: torch.Tensor | None) -> PromptPrediction:
        if points is None and box is None:
            raise ValueError("an interactive prediction needs at least one point or a box")
        h, w = image.original_size
        sx, sy = image.input_size[1] / w, image.input_size[0] / h
        device = self.model.device
        coords = labels = box_t = None
        if points is not None:
            pts = np.asarray(points, dtype=np.float32).reshape(-1, 2) * np.array([sx, sy], np.float32)
            coords = torch.from_numpy(pts).to(device)[None]
            lab = np.ones(len(pts)) if point_labels is None else np.asarray(point_labels).reshape(-1)
            if len(lab) != len(pts):
                raise ValueError(f"{len(pts)} points but {len(lab)} point labels")
            labels = torch.from_numpy(lab.astype(np.int64)).to(device)[None]
        if box is not None:
            b = np.asarray(box, dtype=np.float32).reshape(4) * np.array([sx, sy, sx, sy], np.float32)
            box_t = torch.from_numpy(b).to(device)[None]
        class_index = self.model.class_names.index(class_name) if class_name in self.model.class_names else None
        # Several clicks are ambiguous less often than one: one click asks for 3 candidates, like SAM's demo.
        multimask = box is None and (coords is None or coords.shape[1] == 1)
        if mask_input is not None:
            mask_input = mask_input.reshape(1, 1, *mask_input.shape[-2:]).to(device)
        # A fed-back mask changes the image tokens the reused projections read: no reuse then.
        reuse = base and mask_input is None
        with self._autocast(), decoding(image.embedding) if reuse else nullcontext():
            low_res, iou = self.model.prompt_logits(image.features.to(device), coords, labels, box_t,
                                                    [class_index], multimask=multimask, base_decoder=base,
                                                    run=None if self.compiled is None else self._run_decoder,
                                                    mask_input=mask_input)
        best = int(iou[0].argmax())
        chosen = low_res[0, best : best + 1].float()
        logits = self.model.upscale(chosen[None], image.input_size, (h, w))
        return PromptPrediction(mask=(logits[0] > 0).cpu().numpy(), score=float(iou[0, best].clamp(0, 1)),
                                low_res=chosen.cpu())

    def _run_decoder(self, decoder: torch.nn.Module, features: ImageFeatures, image_pe: torch.Tensor,
                     sparse: torch.Tensor, dense: torch.Tensor, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if self.compiled.ready and decoder is self.model.base_mask_decoder and self._base_twin is not None:
            decoder = self._base_twin
        return self.compiled(self.model.family, decoder, features, image_pe, sparse, dense, multimask)

    def warm_compiled_clicks(self) -> None:
        """Compile the click decoders on a blank embedding, without the model lock (the calls read the
        model, never change it): SAM's own decoder first (what answers clicks by default), then the
        adapter's, at each thread count a click may run with, the idle machine's first."""
        if self.compiled is None:
            return
        model, device = self.model, self.model.device
        decoders = [d for d in (self._base_twin, model.sam.mask_decoder) if d is not None]
        counts = self.thread_counts() if device.type == "cpu" else (torch.get_num_threads(),)
        self.compiled.allow_graphs(len(decoders) * len(counts))
        shapes = model.family.feature_shapes(model.image_size).values()
        for decoder in decoders:
            for count in sorted(counts, reverse=True):
                with runtime.intra_op_threads(count), torch.inference_mode(), self._autocast():
                    # fp32 features, as the encoder's (cast back after autocast) and the store's are.
                    blank = ImageFeatures.from_tensors([torch.zeros(1, *shape, device=device) for shape in shapes])
                    coords = torch.zeros(1, 1, 2, device=device)
                    labels = torch.ones(1, 1, dtype=torch.int64, device=device)
                    sparse, dense = model.family.prompts(model.sam, coords, labels, None, None)
                    self.compiled(model.family, decoder, blank, model.sam.prompt_encoder.get_dense_pe(), sparse,
                                  dense, True)


def _pixels(image: np.ndarray | ReducedImage) -> np.ndarray:
    return image.pixels if isinstance(image, ReducedImage) else image


def _original_size(image: np.ndarray | ReducedImage) -> tuple[int, int]:
    if isinstance(image, ReducedImage):
        return image.original_size
    return int(image.shape[0]), int(image.shape[1])


def _resolve_size(original: tuple[int, int], image_size: int) -> tuple[int, int]:
    h, w = original
    limit = MAX_RESOLVE_AREA_FACTOR * image_size * image_size
    if h * w <= limit:
        return original
    scale = (limit / (h * w)) ** 0.5
    return max(1, int(h * scale)), max(1, int(w * scale))
