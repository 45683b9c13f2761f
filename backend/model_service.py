"""The model, loaded once per process, with each project's active adapter swapped on as needed.

One SAM base model per adapter configuration lives in memory. A request names a project; the
service finds the project's adapter version (pinned, else the registry's active one), applies
that adapter's tensors onto the live model when another one is on it (milliseconds, no base
reload), and runs the encoder/decoder under a lock. The lock is taken per operation (one encoder
batch, one decode), so a long batch prediction lets interactive clicks through between batches.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import redis
import torch
from cachetools import LRUCache

from backend.embedding_cache import EmbeddingCache
from backend.project_settings import PROJECTS_IN_MEMORY
from backend.settings import Settings
from backend.versioning import model_version
from training.data.images import ReducedImage
from training.inference.compiled_decoder import CompiledDecoder
from training.inference.embedding_store import EmbeddingStore, embedding_key
from training.inference.predictor import ClassPrediction, ImageEmbedding, Predictor, PromptPrediction
from training.inference.priority import RequestsFirst
from training.inference.runtime import autocast_dtype, resolve_device
from training.model.adapter import SamAdapter
from training.model.artifact import AdapterMismatchError, Artifact, read_artifact
from training.model.base_models import base_model
from training.model.config import AdapterConfig
from training.model.loading import base_identity, model_label
from training.model.weights import load_base_model, resolve_checkpoint
from training.registry import AdapterRegistry, RegistryError, VersionNotFound

log = logging.getLogger(__name__)

MB = 1024 * 1024
# Parsed adapter artifacts kept in memory (LoRA adapters are ~1 MB; full-encoder ones ~25 MB for vit_t).
ARTIFACT_CACHE_ENTRIES = 8
# Base models kept in memory at once (one per adapter configuration in use; the default one stays).
MAX_LIVE_MODELS = 2
BASE_ENCODER = "base"
# Longest a request waits for the background encoding of its own image (one encoder pass is ~1.3 s here).
AHEAD_WAIT_S = 30.0
# Errors that mean "the registry cannot be asked right now" (Redis down, disk trouble).
REGISTRY_OUTAGE = (RegistryError, redis.RedisError, OSError)
# The embedding store failing (a full disk: files raise OSError, its SQLite index sqlite3.Error, even on
# reads, which record access times): a miss or an unsaved embedding, never a failed prediction.
STORE_FAILURES = (OSError, sqlite3.Error)


def _config_key(config: AdapterConfig) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)


@dataclass(frozen=True)
class AdapterChoice:
    """Which adapter a request predicts with (version None: none trained, the base model)."""

    project: str | None
    version: int | None
    model_version: str
    pinned: bool = False

    @property
    def trained(self) -> bool:
        return self.version is not None


@dataclass
class PreparedAdapter:
    """An AdapterChoice with its artifact read and checked, ready to be applied to a live model."""

    choice: AdapterChoice
    class_names: list[str]
    config: AdapterConfig
    artifact: Artifact | None = None

    @property
    def target(self) -> tuple[str, int] | None:
        return (self.choice.project, self.choice.version) if self.choice.trained else None

    @property
    def clicks_decoder(self) -> str:
        """Which decoder answers clicks: SAM's own (``base``) for a frozen encoder unless the training
        job measured the adapter's better on simulated clicks; an adapted encoder has only its own."""
        if not self.config.keeps_base_embeddings:
            return "adapter"
        if self.artifact is None:
            return "base"
        return "adapter" if self.artifact.header.extra.get("clicks_decoder") == "adapter" else "base"

    @property
    def encoder_key(self) -> str:
        """Identity of the image encoder: embeddings are shared by everything with the same key."""
        if not self.choice.trained or self.config.keeps_base_embeddings:
            return BASE_ENCODER
        return f"p{self.choice.project}-v{self.choice.version}"


@dataclass
class _LiveModel:
    model: SamAdapter
    predictor: Predictor
    applied: tuple[str, int] | None = None  # the adapter on it now; None = behaves as the base model


class ModelService:
    """The loaded base model(s), the adapter switch, the embedding cache and the model lock."""

    def __init__(self, settings: Settings, registry: AdapterRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.device = resolve_device(settings.DEVICE)
        self.weights = resolve_checkpoint(settings.SAM_MODEL, settings.SAM_CHECKPOINT, settings.SAMLOOP_MODEL_CACHE)
        self.base = base_identity(self.weights, settings.SAM_IMAGE_SIZE)
        self.cache = EmbeddingCache(settings.EMBEDDING_CACHE_MB * MB)
        # Base-encoder embeddings on disk, shared with the training worker through the data directory.
        self.store = (EmbeddingStore(settings.embedding_store_dir, settings.EMBEDDING_STORE_MB * MB)
                      if settings.EMBEDDING_STORE_MB else None)
        self.encoder_batch_size = settings.encoder_batch_size(self.device.type)
        # PRECISION resolved once, for every predictor and for /health: auto is bf16 only where the
        # hardware runs it natively (emulated bf16 made the vit_t encoder 11-45x slower on a CPU
        # without avx512_bf16).
        self.precision = "bf16" if autocast_dtype(self.device, settings.PRECISION) == torch.bfloat16 else "fp32"
        self._lock = threading.RLock()
        # Background encoding (training.inference.priority) pauses while any request runs.
        self.priority = RequestsFirst()
        self._ahead: dict[str, threading.Event] = {}  # digests being encoded in the background now
        self._ahead_lock = threading.Lock()
        self._artifact_lock = threading.Lock()
        self._live: OrderedDict[str, _LiveModel] = OrderedDict()
        # Parsed artifacts, or why one does not fit this base (so a refused version is not re-read).
        self._artifacts: LRUCache[tuple[str, int], Artifact | AdapterMismatchError] = LRUCache(ARTIFACT_CACHE_ENTRIES)
        # For registry outages; an LRUCache is not thread-safe, hence the lock (choose runs in request threads).
        self._last_active: LRUCache[str, int | None] = LRUCache(PROJECTS_IN_MEMORY)
        self._last_active_lock = threading.Lock()
        self._refused: set[tuple[str | None, int | None]] = set()
        self._default_key = _config_key(AdapterConfig())
        # Counters for tests, benchmarks and /health: a rebuilt base or a re-encoded image is visible.
        self.base_builds = 0
        self.encoded_images = 0
        self.encoded_ahead = 0  # of those, encoded in the background before anyone asked
        self.encoded_on_request = 0  # the others: a request waited for them
        # Clicks: the compiled mask decoder once warm (in the background), the eager one until then.
        # Only families whose decoder the compiled path knows are compiled; /health says so for the others.
        compilable = base_model(settings.SAM_MODEL).family.compilable
        self.compiled = CompiledDecoder(settings.COMPILE_DECODER and compilable, settings.inductor_cache_dir,
                                        off_reason="COMPILE_DECODER=false" if compilable
                                        else f"{settings.SAM_MODEL}'s decoder is not compiled: its clicks run eagerly")
        with self._lock:
            self.compiled.start(self._live_model(AdapterConfig()).predictor.warm_compiled_clicks)

    # ----- identity ------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        return model_label(self.base)

    @property
    def untrained(self) -> AdapterChoice:
        return AdapterChoice(None, None, model_version(self.base, None, None))

    def describe(self) -> dict:
        return {"model": self.label, "model_type": self.base.model_type, "image_size": self.base.image_size,
                "device": str(self.device), "random_weights": self.weights.is_random,
                "precision": self.precision, "encoder_batch_size": self.encoder_batch_size,
                "click_decoder": self.compiled.describe()}

    # ----- which adapter ---------------------------------------------------------------------------
    def choose(self, project: str | None, pinned: int | None = None) -> AdapterChoice:
        """The adapter version for ``project``: ``pinned`` if given, else the registry's active one.

        When the registry cannot be reached, the last version seen for the project is used, so
        predictions keep working through a Redis outage.
        """
        if project is None:
            return self.untrained
        if pinned is not None:
            return AdapterChoice(project, pinned, model_version(self.base, project, pinned), pinned=True)
        try:
            version = self.registry.active_version(project)
            with self._last_active_lock:
                self._last_active[project] = version
        except REGISTRY_OUTAGE as exc:
            with self._last_active_lock:
                version = self._last_active.get(project)
            log.warning("project %s: registry unreachable (%s); using last known adapter version %s",
                        project, exc, version)
        return AdapterChoice(project, version, model_version(self.base, project, version))

    def prepare(self, choice: AdapterChoice) -> PreparedAdapter:
        """Read and check the chosen adapter; an unusable one falls back (pinned -> active -> base)."""
        if not choice.trained:
            return PreparedAdapter(choice, [], AdapterConfig())
        try:
            artifact = self._artifact(choice.project, choice.version)
        except VersionNotFound as exc:
            if choice.pinned:
                log.error("project %s: pinned adapter version %s is gone (%s); using the active version",
                          choice.project, choice.version, exc)
                return self.prepare(self.choose(choice.project))
            log.error("project %s: adapter version %s not found (%s); predicting without adapter",
                      choice.project, choice.version, exc)
            return self.prepare(self.untrained)
        except (*REGISTRY_OUTAGE, AdapterMismatchError) as exc:
            # Said loudly once per version, then quietly: every request would repeat it.
            level = logging.DEBUG if (choice.project, choice.version) in self._refused else logging.ERROR
            self._refused.add((choice.project, choice.version))
            log.log(level, "project %s: adapter version %s is not usable here (%s); predicting without adapter",
                    choice.project, choice.version, exc)
            return self.prepare(self.untrained)
        return PreparedAdapter(choice, list(artifact.header.class_names), artifact.header.config, artifact)

    def _artifact(self, project: str, version: int) -> Artifact:
        """The version's parsed artifact, checked against this base once: versions never change."""
        key = (project, version)
        with self._artifact_lock:
            cached = self._artifacts.get(key)
        if isinstance(cached, AdapterMismatchError):
            raise cached
        if cached is not None:
            return cached
        _, data = self.registry.load(project, version)
        try:
            parsed: Artifact | AdapterMismatchError = read_artifact(data)
            parsed.header.check_base(self.base)
        except AdapterMismatchError as exc:
            parsed = exc
        with self._artifact_lock:
            self._artifacts[key] = parsed
        if isinstance(parsed, AdapterMismatchError):
            raise parsed
        log.info("project %s: loaded adapter version %s (%d tensors)", project, version, len(parsed.tensors))
        return parsed

    # ----- live models ---------------------------------------------------------------------------
    def _live_model(self, config: AdapterConfig) -> _LiveModel:
        key = _config_key(config)
        live = self._live.get(key)
        if live is not None:
            self._live.move_to_end(key)
            return live
        log.info("building %s base model for adapter config %s", self.label, key)
        sam = load_base_model(self.weights, self.base.image_size)
        self.base_builds += 1
        # The placeholder class is never used: class prompts come with each applied adapter.
        model = SamAdapter(sam, self.base, ["object"], config).to(self.device).eval()
        self.priority.add_pause_points(model.sam.image_encoder)
        # On CPU: channels-last convolutions (oneDNN), and no more intra-op threads than there are free
        # cores, so ops don't wait for a thread that a training worker has pushed off its core.
        on_cpu = self.device.type == "cpu"
        predictor = Predictor(model, precision=self.precision, channels_last=on_cpu,
                              threads="free" if on_cpu else None, compiled=self.compiled)
        live = _LiveModel(model, predictor)
        self._live[key] = live
        while len(self._live) > MAX_LIVE_MODELS:
            victim = next(k for k in self._live if k != self._default_key and k != key)
            log.info("releasing the base model for adapter config %s", victim)
            del self._live[victim]
        return live

    def _ensure(self, prepared: PreparedAdapter) -> _LiveModel:
        """The live model with ``prepared`` applied (caller holds the lock)."""
        live = self._live_model(prepared.config)
        if live.applied != prepared.target:
            if prepared.target is None:
                live.model.reset_to_base()
            else:
                live.model.apply_artifact(prepared.artifact)
                log.info("applied adapter %s", prepared.choice.model_version)
            live.applied = prepared.target
        return live

    # ----- inference -------------------------------------------------------------------------------
    def lookup(self, prepared: PreparedAdapter, digest: str) -> ImageEmbedding | None:
        """A stored embedding of the image with content ``digest``: memory first, then (base encoder) disk."""
        key = (digest, prepared.encoder_key)
        found = self.cache.get(key)
        if found is None and self.store is not None and prepared.encoder_key == BASE_ENCODER:
            try:
                found = self.store.get(embedding_key(self.base, digest))
            except STORE_FAILURES as exc:
                log.warning("embedding store: cannot read an embedding (%s); encoding instead", exc)
            if found is not None:
                self.cache.put(key, found)
        return found

    def has_base_embedding(self, digest: str) -> bool:
        """Whether the base encoder's embedding of the image is kept (memory or disk); reads no tensor."""
        if (digest, BASE_ENCODER) in self.cache:
            return True
        try:
            return self.store is not None and embedding_key(self.base, digest) in self.store
        except STORE_FAILURES:
            return False

    def encode_ahead(self, digest: str, image: np.ndarray | ReducedImage) -> bool:
        """Encode an image with the base encoder before anyone asks, in the calling (background)
        thread: without the model lock, pausing at every encoder block while a request runs. The
        embedding is kept in memory and on disk, where every frozen-encoder version finds it.
        Returns False when it was kept already."""
        if self.has_base_embedding(digest):
            return False
        with self._ahead_lock:
            if digest in self._ahead:
                return False
            done = self._ahead[digest] = threading.Event()
        with self._lock:
            # The default configuration's encoder is the base one, and its live model is never released.
            live = self._live_model(AdapterConfig())
        try:
            with self.priority.background():
                embedding = live.predictor.embed([image], batch_size=1)[0]
            with self._lock:  # the counters requests update under it
                self.encoded_images += 1
                self.encoded_ahead += 1
            self._keep(BASE_ENCODER, digest, embedding)
        finally:
            with self._ahead_lock:
                del self._ahead[digest]
            done.set()
        return True

    def _after_background(self, prepared: PreparedAdapter, digest: str) -> ImageEmbedding | None:
        """When the background is encoding this very image, wait for it rather than encode it twice
        (outside any request, so the background is not held at a pause point meanwhile)."""
        if prepared.encoder_key != BASE_ENCODER:
            return None
        with self._ahead_lock:
            running = self._ahead.get(digest)
        if running is None or not running.wait(timeout=AHEAD_WAIT_S):
            return None
        return self.lookup(prepared, digest)

    def embed(self, prepared: PreparedAdapter, images: list[tuple[str, np.ndarray | ReducedImage]]
              ) -> list[ImageEmbedding]:
        """Embeddings for (content digest, H x W x 3 uint8 image) pairs, stored ones first, else from the encoder.

        Missing images are encoded ``encoder_batch_size`` at a time; duplicates are encoded once.
        Base-encoder embeddings go to the disk store too, where every adapter version finds them.
        """
        found: dict[str, ImageEmbedding] = {}
        todo: dict[str, np.ndarray | ReducedImage] = {}
        for digest, image in images:
            if digest in found or digest in todo:
                continue
            stored = self.lookup(prepared, digest) or self._after_background(prepared, digest)
            if stored is not None:
                found[digest] = stored
            else:
                todo[digest] = image
        pending = list(todo.items())
        batch_size = self.encoder_batch_size
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            with self.priority.request(), self._lock:
                live = self._ensure(prepared)
                embeddings = live.predictor.embed([image for _, image in chunk], batch_size=len(chunk))
                self.encoded_images += len(chunk)
                self.encoded_on_request += len(chunk)
            for (digest, _), embedding in zip(chunk, embeddings, strict=True):
                self._keep(prepared.encoder_key, digest, embedding)
                found[digest] = embedding
        return [found[digest] for digest, _ in images]

    def _keep(self, encoder_key: str, digest: str, embedding: ImageEmbedding) -> None:
        self.cache.put((digest, encoder_key), embedding)
        if self.store is not None and encoder_key == BASE_ENCODER:
            try:
                self.store.put(embedding_key(self.base, digest), embedding)
            except STORE_FAILURES as exc:  # a full disk must not fail the prediction that computed it
                log.warning("embedding store: cannot keep an embedding (%s)", exc)

    def predict_classes(self, prepared: PreparedAdapter, embedding: ImageEmbedding,
                        class_names: list[str]) -> ClassPrediction:
        """Promptless class masks (``class_names`` must be among the adapter's classes)."""
        with self.priority.request(), self._lock:
            live = self._ensure(prepared)
            return live.predictor.predict_classes(embedding, class_names)

    def predict_prompt(self, prepared: PreparedAdapter, embedding: ImageEmbedding, points: np.ndarray | None,
                       point_labels: np.ndarray | None, box: np.ndarray | None,
                       class_name: str | None) -> PromptPrediction:
        """One mask for points/box; conditioned on ``class_name``'s prompt when the adapter knows it."""
        if class_name not in prepared.class_names:
            class_name = None
        with self.priority.request(), self._lock:
            live = self._ensure(prepared)
            return live.predictor.predict_prompt(embedding, points, point_labels, box, class_name,
                                                 decoder=prepared.clicks_decoder)
