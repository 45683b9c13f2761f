"""``JobSettings``: everything a training job needs, JSON-safe, from the enqueuing side and the worker's environment.

The backend builds the dict (``backend.training_link.job_settings``), the scheduler sends it with
every job, and ``JobSettings.resolve`` fills what it leaves empty from the worker's environment
(the same variable names as the backend: LABEL_STUDIO_URL, SAM_MODEL, ...). Imports no torch, so
the scheduler and the backend can check settings without loading the model code.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from training.inference.devices import check_device
from training.learn.config import TrainConfig
from training.model.config import AdapterConfig

__all__ = ["DEFAULT_DEBOUNCE_SECONDS", "ENV_NAMES", "JobSettings", "step_budget"]

# A burst's last event starts the run this many seconds later. Annotators submit every few seconds at
# most, so a run rarely waits on one person; what the wait gathers is a bulk import or a script's burst,
# whose events come within milliseconds. Events during a run make exactly one follow-up either way.
DEFAULT_DEBOUNCE_SECONDS = 1.0

# Environment variable -> JobSettings field (names shared with backend/settings.py).
ENV_NAMES = {
    "LABEL_STUDIO_URL": "label_studio_url",
    "LABEL_STUDIO_API_KEY": "label_studio_api_key",
    "SAM_MODEL": "model_type",
    "SAM_CHECKPOINT": "checkpoint",
    "SAM_IMAGE_SIZE": "image_size",
    "SAMLOOP_DATA_DIR": "data_dir",
    "SAMLOOP_MODEL_CACHE": "model_cache",
    "SAMLOOP_REDIS_PREFIX": "redis_prefix",
    "SAMLOOP_KEEP_VERSIONS": "keep_versions",
    "SAMLOOP_REGISTRY": "registry",
    "DEVICE": "device",
    "PRECISION": "precision",
    "TRAIN_MAX_SECONDS": "train_max_seconds",
    "TRAIN_MIN_ANNOTATIONS": "min_annotations",
    "TRAIN_PROMOTE_TOLERANCE": "promote_tolerance",
    "SAMLOOP_ADAPTER": "adapter_kind",
    "EMBEDDING_STORE_MB": "embedding_store_mb",
    "TRAIN_INCREMENTAL_STEPS": "incremental_steps",
    "TRAIN_NEW_SHARE": "new_share",
    "TRAIN_HOLDOUT_CAP": "holdout_cap",
    "TRAIN_CLICK_OBJECTS": "click_objects",
    "TRAIN_CLICK_MAX_CLICKS": "click_max_clicks",
}


@dataclass
class JobSettings:
    """Everything a training job needs; JSON-safe (``to_dict`` / ``from_dict``).

    registry: ``""`` = a local directory ``<data_dir>/adapters``; ``"redis"`` = the Redis the job
        came from (prefix ``redis_prefix``; for workers without a shared disk); a path or a
        redis:// URL = ``open_registry(registry)``.
    Step budget of a full run: ``steps_per_image`` x training images, clamped to [min_steps, max_steps];
        of an incremental run (warm start from the active version): ``incremental_steps``, with
        ``new_share`` of every batch drawn from the tasks new or changed since that version. The
        wall-clock budget ``train_max_seconds`` applies too, whichever ends first.
    Held-out set: one new task in ``holdout_every``, at most ``holdout_cap``, none below ``holdout_min``
        labeled tasks (``training.pipeline.holdout``). The click gate clicks at most ``click_objects``
        held-out objects.
    adapter_kind: ``decoder`` (frozen encoder, trained on stored embeddings) or ``encoder`` (encoder
        LoRA); ``adapter_options`` refine it. A project's kind comes from its settings in the backend.
    embedding_store_mb: bound of the on-disk embedding store ``<data_dir>/embeddings``, shared with
        the backend when both use the same data directory.
    click_max_clicks: the simulated clicker's budget per held-out object (NoC is capped at it).
    """

    label_studio_url: str = ""
    label_studio_api_key: str = ""
    model_type: str = "vit_t"
    checkpoint: str = ""
    image_size: int = 1024
    data_dir: str = "./data"
    model_cache: str = ""
    registry: str = ""
    redis_prefix: str = "samloop"
    keep_versions: int = 10
    device: str = "auto"
    precision: str = "auto"
    train_max_seconds: float = 600.0
    # 8 steps of batch 4 per image: every labeled image is seen about 32 times per run.
    steps_per_image: int = 8
    min_steps: int = 40
    max_steps: int = 400
    batch_size: int = 4
    train_options: dict[str, Any] = field(default_factory=dict)
    adapter_kind: str = "decoder"
    adapter_options: dict[str, Any] = field(default_factory=dict)
    embedding_store_mb: int = 4096
    # The gate's budget: 4 objects of at most 10 clicks (NoC@90 capped at 10) keep a run's click check to a few
    # seconds where random weights never reach 0.90; a decoder that clicks well stops after 1-5 clicks.
    click_max_clicks: int = 10
    click_objects: int = 4
    promote_tolerance: float = 0.01
    holdout_every: int = 5
    holdout_min: int = 5
    holdout_cap: int = 32
    incremental_steps: int = 16
    new_share: float = 0.5
    min_annotations: int = 1
    export_max_side: int = 2048
    debounce_seconds: float = DEFAULT_DEBOUNCE_SECONDS
    max_debounce_seconds: float = 60.0
    lock_ttl_seconds: float = 60.0
    ls_retries: int = 3
    ls_backoff: float = 2.0

    def __post_init__(self) -> None:
        ints = {"image_size": 64, "keep_versions": 1, "steps_per_image": 1, "min_steps": 1, "max_steps": 1,
                "batch_size": 1, "holdout_every": 2, "holdout_min": 0, "min_annotations": 0,
                "export_max_side": 16, "ls_retries": 0, "embedding_store_mb": 1, "click_max_clicks": 1,
                "click_objects": 0, "holdout_cap": 0, "incremental_steps": 1}
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, str) and value.strip().lstrip("-").isdigit():
                value = int(value)
                setattr(self, name, value)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.new_share = float(self.new_share)
        if not 0 < self.new_share <= 1:
            raise ValueError(f"new_share must be within (0, 1], got {self.new_share!r}")
        self.promote_tolerance = float(self.promote_tolerance)
        if not -1.0 <= self.promote_tolerance <= 1.0:
            raise ValueError(f"promote_tolerance must be within [-1, 1], got {self.promote_tolerance!r}")
        for name in ("train_max_seconds", "debounce_seconds", "max_debounce_seconds",
                     "lock_ttl_seconds", "ls_backoff"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
            setattr(self, name, value)
        if self.image_size % 16:
            raise ValueError(f"image_size must be a multiple of 16, got {self.image_size}")
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) must not exceed max_steps ({self.max_steps})")
        if self.train_max_seconds <= 0 or self.lock_ttl_seconds < 5:
            raise ValueError(f"train_max_seconds must be > 0 and lock_ttl_seconds >= 5, got "
                             f"{self.train_max_seconds}, {self.lock_ttl_seconds}")
        check_device(self.device)
        TrainConfig.from_dict({**self.train_options, "max_steps": 1})  # fail here, not after the export
        AdapterConfig.for_kind(self.adapter_kind, **self.adapter_options)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown job setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in data.items() if v is not None})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> JobSettings:
        """Settings from environment variables (see ``ENV_NAMES``), then ``overrides``."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for env_name, name in ENV_NAMES.items():
            raw = environ.get(env_name)
            if raw is None or raw == "":
                continue
            kind = {f.name: f.type for f in fields(cls)}[name]
            values[name] = float(raw) if kind == "float" else int(raw) if kind == "int" else raw
        return cls.from_dict({**values, **overrides})

    @classmethod
    def resolve(cls, settings: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> JobSettings:
        """The job's settings: this process's environment, overridden by every non-empty entry of
        ``settings`` (so a worker supplies what the enqueuing side left out, e.g. the API key)."""
        given = {k: v for k, v in settings.items() if v is not None and v != ""}
        cls.from_dict(given)  # name unknown keys before mixing in the environment
        return cls.from_env(environ, **given)

    def job_timeout(self) -> int:
        """rq timeout: debounce + the training budget + room for export, model load, two evaluations."""
        return int(self.max_debounce_seconds + self.train_max_seconds * 1.25 + 900)


def step_budget(train_images: int, settings: JobSettings) -> int:
    """The step cap for a dataset: more annotations may use more steps, within [min, max]."""
    return max(settings.min_steps, min(settings.max_steps, settings.steps_per_image * train_images))
