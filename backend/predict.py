"""/predict: batch pre-annotation and interactive (smart tool) masks for Label Studio tasks.

Batch: every class the project's adapter knows and the config has, one region per class (or per
instance), tasks downloaded a chunk ahead of the encoder and encoded in batches. Interactive: one
mask from the clicked points and box. A task whose image fails gets an empty result and an
``error`` field; the other tasks are still predicted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from cachetools import LRUCache

from backend.image_source import ImageFetchError, ImageSource
from backend.metrics import counts_encodings_ahead, timed_prediction
from backend.model_service import ModelService, PreparedAdapter
from backend.project_settings import ProjectSettings, ProjectSettingsStore
from backend.prompts import Prompt, parse_context
from backend.regions import mask_regions, task_score
from backend.schemas import PredictRequest, TaskModel
from training.data.images import ReducedImage, image_digest
from training.inference.predictor import ImageEmbedding
from training.labelstudio.label_config import LabelConfigError, LabelSetup, parse_label_config

log = logging.getLogger(__name__)

DOWNLOAD_WORKERS = 4
# Image URL -> content digest, so a repeated click finds its cached embedding without re-decoding.
URL_INDEX_ENTRIES = 4096


@dataclass
class _Fetched:
    digest: str | None = None
    image: ReducedImage | None = None  # decoded for the model's input size, with its full size
    error: str | None = None


class PredictionService:
    """Turns a PredictRequest into Label Studio's ``{"results": [...]}``, one item per task."""

    def __init__(self, models: ModelService, images: ImageSource, store: ProjectSettingsStore,
                 resolve: Callable[[str], str] = str) -> None:
        self.models = models
        self.images = images
        self.store = store
        # A bare project id (a task's ``project``) -> the key it means (``backend.project_keys``).
        self.resolve = resolve
        self._url_index: LRUCache[tuple[str | None, str], str] = LRUCache(URL_INDEX_ENTRIES)
        self._index_lock = threading.Lock()
        # Set by the app to the pre-encoder's submit: (project, [(task id, image URL)], reason) -> queued.
        self.encode_ahead: Callable[[str, list[tuple[int | None, object]], str], bool] | None = None

    def close(self) -> None:
        """Nothing to release: each batch request downloads through threads of its own."""

    # ----- entry point -----------------------------------------------------------------------------
    @timed_prediction
    def predict(self, request: PredictRequest) -> dict:
        """Raises PromptError (a malformed interactive context); everything else is a per-task outcome."""
        project = request.project_ref()
        project = None if project is None else self.resolve(project)
        prompt = parse_context(request.context, max_points=self.models.settings.MAX_PROMPT_POINTS)
        sent_error = _config_error(request.label_config)
        # Only a usable config is kept: a broken one (e.g. <View/>) must not replace the project's working one.
        sent = request.label_config if sent_error is None else None
        if project is None:
            settings, stored_config = ProjectSettings(), None
        else:
            # One store round trip: the switches, the stored label config, and noting the project.
            settings, stored_config = self.store.read(project, sent)
        choice = self.models.choose(project, settings.pinned_version)
        if sent_error is not None:
            return self._empty(request.tasks, choice.model_version, f"project {project}: {sent_error}")
        config_text = sent or stored_config
        if not config_text:
            return self._empty(request.tasks, choice.model_version,
                               f"no label_config in the request and none stored for project {project}: "
                               "connect the backend again (Label Studio then calls /setup)")
        try:
            setup = parse_label_config(config_text)
        except LabelConfigError as exc:
            return self._empty(request.tasks, choice.model_version, f"project {project}: {exc}")
        if not settings.predictions:
            log.info("project %s: predictions are switched off (extra_params predictions=false); "
                     "answering %d task(s) without regions", project, len(request.tasks))
            return self._empty(request.tasks, choice.model_version)
        prepared = self.models.prepare(choice)
        if prompt is not None and request.tasks:
            first = self._interactive(request.tasks[0], prompt, setup, prepared, project)
            rest = self._empty(request.tasks[1:], prepared.choice.model_version)["results"]
            return {"results": [first, *rest]}
        return {"results": self._batch(request.tasks, setup, prepared, project, settings.split_instances)}

    # ----- interactive -------------------------------------------------------------------------------
    def _interactive(self, task: TaskModel, prompt: Prompt, setup: LabelSetup, prepared: PreparedAdapter,
                     project: str | None) -> dict:
        version = prepared.choice.model_version
        url = task.data.get(setup.image_key)
        try:
            embedding = self._embedding_for(prepared, url, task.id, project)
        except ImageFetchError as exc:
            log.error("project %s: %s", project, exc)
            return _result([], 0.0, version, str(exc))
        height, width = embedding.original_size
        label = setup.output_label_for(prompt.label)
        prediction = self.models.predict_prompt(
            prepared, embedding, prompt.points_px(width, height), prompt.labels_array(),
            prompt.box_px(width, height), class_name=label,
        )
        regions = mask_regions(prediction.mask, label, prediction.score, setup) if label else []
        return _result(regions, prediction.score if regions else 0.0, version)

    def known_digest(self, url: object, project: str | None) -> str | None:
        """The content digest of the image last fetched from ``url`` for ``project``, if remembered."""
        if not isinstance(url, str):
            return None
        with self._index_lock:
            return self._url_index.get((project, url))

    def _embedding_for(self, prepared: PreparedAdapter, url: object, task_id: int | None,
                       project: str | None) -> ImageEmbedding:
        digest = self.known_digest(url, project)
        if digest is not None:
            cached = self.models.lookup(prepared, digest)
            if cached is not None:
                return cached
        fetched = self._fetch(url, task_id, project)
        if fetched.error is not None:
            raise ImageFetchError(fetched.error)
        return self.models.embed(prepared, [(fetched.digest, fetched.image)])[0]

    # ----- batch ------------------------------------------------------------------------------------
    def _batch(self, tasks: list[TaskModel], setup: LabelSetup, prepared: PreparedAdapter, project: str | None,
               split: bool) -> list[dict]:
        version = prepared.choice.model_version
        if not prepared.choice.trained:
            if len(tasks) == 1:
                # One task = Label Studio opened it in the editor: encode it now so the first click is warm.
                self._warm(tasks[0], setup, prepared, project)
            elif project is not None and self.encode_ahead is not None:
                # Nothing to predict yet, but every click on these tasks will need their embeddings.
                self.encode_ahead(project, [(t.id, t.data.get(setup.image_key)) for t in tasks], "batch predict")
            return self._empty(tasks, version)["results"]
        names = [name for name in setup.labels if name in prepared.class_names]
        if not names:
            log.warning("project %s: adapter %s knows %s, the label config has %s: nothing to predict",
                        project, version, prepared.class_names, list(setup.labels))
            return self._empty(tasks, version)["results"]
        results: list[dict] = []
        size = self.models.encoder_batch_size
        chunks = [tasks[i : i + size] for i in range(0, len(tasks), size)]
        # Download threads per request, not shared: five batches waiting on a slow host held a shared pool of
        # four and delayed every other project's batch (0.3 s -> 15 s; minutes with the default deadline).
        with ThreadPoolExecutor(max_workers=min(DOWNLOAD_WORKERS, 2 * size), thread_name_prefix="image-fetch") as pool:
            upcoming = self._submit(pool, chunks[0], setup, project) if chunks else []
            for index in range(len(chunks)):
                fetched = [future.result() for future in upcoming]
                # Download the next chunk while this one is on the encoder.
                upcoming = (self._submit(pool, chunks[index + 1], setup, project) if index + 1 < len(chunks)
                            else [])
                results += self._predict_chunk(fetched, names, setup, prepared, project, split)
        return results

    def _predict_chunk(self, fetched: list[_Fetched], names: list[str], setup: LabelSetup,
                       prepared: PreparedAdapter, project: str | None, split: bool) -> list[dict]:
        version = prepared.choice.model_version
        good = [item for item in fetched if item.error is None]
        embeddings = iter(self.models.embed(prepared, [(item.digest, item.image) for item in good]))
        results = []
        for item in fetched:
            if item.error is not None:
                log.error("project %s: %s", project, item.error)
                results.append(_result([], 0.0, version, item.error))
                continue
            prediction = self.models.predict_classes(prepared, next(embeddings), names)
            regions, scores = [], []
            for name in names:
                if name not in prediction.scores:
                    continue
                made = mask_regions(prediction.mask(name), name, prediction.scores[name], setup, split=split)
                regions += made
                scores += [prediction.scores[name]] if made else []
            results.append(_result(regions, task_score(scores), version))
        return results

    @counts_encodings_ahead("task_opened")
    def _warm(self, task: TaskModel, setup: LabelSetup, prepared: PreparedAdapter, project: str | None) -> None:
        try:
            self._embedding_for(prepared, task.data.get(setup.image_key), task.id, project)
        except ImageFetchError as exc:
            log.warning("project %s: could not pre-encode task %s: %s", project, task.id, exc)

    # ----- images -----------------------------------------------------------------------------------
    def fetch_image(self, url: object, task_id: int | None, project: str | None) -> _Fetched:
        """Download and decode a task's image and note its URL's content digest (for the pre-encoder)."""
        return self._fetch(url, task_id, project)

    def _submit(self, pool: ThreadPoolExecutor, tasks: list[TaskModel], setup: LabelSetup,
                project: str | None) -> list[Future]:
        return [pool.submit(self._fetch, t.data.get(setup.image_key), t.id, project) for t in tasks]

    def _fetch(self, url: object, task_id: int | None, project: str | None) -> _Fetched:
        try:
            image = self.images.fetch_for_model(url, task_id, project, self.models.base.image_size)
        except ImageFetchError as exc:
            return _Fetched(error=str(exc))
        digest = image_digest(image.pixels)
        if isinstance(url, str):
            with self._index_lock:
                self._url_index[(project, url)] = digest
        return _Fetched(digest, image)

    @staticmethod
    def _empty(tasks: list[TaskModel], version: str, error: str | None = None) -> dict:
        if error:
            log.error(error)
        return {"results": [_result([], 0.0, version, error) for _ in tasks]}


def _config_error(config: str | None) -> str | None:
    """Why a request's label config cannot be used (None when it can, or when none was sent)."""
    if config is None:
        return None
    try:
        parse_label_config(config)
    except LabelConfigError as exc:
        return str(exc)
    return None


def _result(regions: list[dict], score: float, version: str, error: str | None = None) -> dict:
    item = {"result": regions, "score": float(score), "model_version": version}
    if error:
        item["error"] = error
    return item
