"""Prometheus metrics: every metric object of the backend is defined here (import and increment them).

Counted as they happen, in this process (prometheus-client's default registry):

- ``samloop_prediction_seconds{kind}``: /predict latency, ``kind`` = ``batch`` or ``interactive``
  (its ``_count`` is the number of requests); ``samloop_predicted_tasks_total{kind}``: tasks answered.
- ``samloop_encodings_ahead_total{source}``: images encoded before anyone clicked on them
  (``task_opened``: the single-task /predict Label Studio sends when a task is opened;
  ``preencoder``: the pre-encoder of the project's task list).

Set every second by ``backend.health.HealthMonitor``:

- ``samloop_redis_up`` (1/0), ``samloop_training_worker_up`` (1/0: a worker listens on the training
  queue, and the embedded one's process runs) and ``samloop_training_workers`` (how many rq lists).

Read when scraped (``ServiceCollector``), so they agree with what the service and Redis hold:

- ``samloop_embedding_lookups_total{layer, result}``: embedding memory cache and disk store hits and misses.
- ``samloop_training_jobs_total{outcome}`` and the ``samloop_training_job_seconds{outcome}`` histogram:
  counted in Redis by the workers (``training.jobs.job_stats``), so every backend process shows the same.
- ``samloop_active_adapter_version{project}`` and ``samloop_served_adapter_version{project}`` (pinned or
  active; 0 = the untrained base model).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import redis
from fastapi import Request
from fastapi.responses import Response
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from training.jobs.job_stats import read_stats

__all__ = ["ENCODINGS_AHEAD", "PREDICTED_TASKS", "PREDICTION_SECONDS", "REDIS_UP", "TRAINING_WORKERS",
           "TRAINING_WORKER_UP", "ServiceCollector", "counts_encodings_ahead", "metrics_endpoint", "timed_prediction"]

log = logging.getLogger(__name__)

Func = TypeVar("Func", bound=Callable[..., Any])

# From a warm click (~0.1 s) to a long batch (Label Studio waits 100 s).
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 100.0, math.inf)

PREDICTION_SECONDS = Histogram("samloop_prediction_seconds", "Seconds to answer a /predict request, by kind",
                               ["kind"], buckets=LATENCY_BUCKETS)
PREDICTED_TASKS = Counter("samloop_predicted_tasks", "Tasks answered by /predict, by kind", ["kind"])
ENCODINGS_AHEAD = Counter("samloop_encodings_ahead", "Images encoded before any click on them, by source",
                          ["source"])
REDIS_UP = Gauge("samloop_redis_up", "1 while Redis (embedded or REDIS_URL) answers, else 0")
TRAINING_WORKER_UP = Gauge("samloop_training_worker_up", "1 while a training worker listens on the training "
                           "queue (and the embedded worker process runs), else 0")
TRAINING_WORKERS = Gauge("samloop_training_workers", "Training workers rq lists on the training queue")


def prediction_kind(request: Any) -> str:
    """``interactive`` when the request carries smart-tool regions (``params.context.result``), else ``batch``."""
    context = getattr(request, "context", None)
    return "interactive" if isinstance(context, dict) and context.get("result") is not None else "batch"


def timed_prediction(func: Func) -> Func:
    """Decorates ``PredictionService.predict(self, request)``: latency and task count by kind."""

    @functools.wraps(func)
    def wrapper(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        kind = prediction_kind(request)
        started = time.perf_counter()
        try:
            return func(self, request, *args, **kwargs)
        finally:
            PREDICTION_SECONDS.labels(kind).observe(time.perf_counter() - started)
            PREDICTED_TASKS.labels(kind).inc(len(getattr(request, "tasks", ()) or ()))

    return wrapper  # type: ignore[return-value]


def counts_encodings_ahead(source: str) -> Callable[[Func], Func]:
    """Decorates a method of an object with ``.models`` (a ModelService): the images it made the encoder
    run count as encoded ahead of clicks. ``encoded_images`` is process-wide, so an encoding another
    thread does meanwhile is counted too (rare: the model lock serialises encoder calls)."""

    def decorate(func: Func) -> Func:
        @functools.wraps(func)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            before = self.models.encoded_images
            try:
                return func(self, *args, **kwargs)
            finally:
                done = self.models.encoded_images - before
                if done > 0:
                    ENCODINGS_AHEAD.labels(source).inc(done)

        return wrapper  # type: ignore[return-value]

    return decorate


class ServiceCollector:
    """Metrics read from a running backend's ``Services`` (models, registry, settings store, Redis)."""

    def __init__(self, services: Any) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        yield self._embedding_lookups()
        for part in (self._training_jobs, self._versions):
            try:
                yield from part()
            except (redis.RedisError, OSError, ValueError) as exc:
                # A scrape during a Redis outage still answers, with what this process knows.
                log.warning("/metrics: %s skipped: %s", part.__name__.strip("_"), exc)

    def _embedding_lookups(self) -> Metric:
        family = CounterMetricFamily("samloop_embedding_lookups", "Embedding lookups by layer and result",
                                     labels=["layer", "result"])
        models = self.services.models
        layers = [("memory", models.cache.stats())]
        if models.store is not None:
            layers.append(("store", models.store.stats()))
        for layer, stats in layers:
            family.add_metric([layer, "hit"], stats["hits"])
            family.add_metric([layer, "miss"], stats["misses"])
        return family

    def _training_jobs(self) -> Iterator[Metric]:
        stats = read_stats(self.services.redis.client, self.services.settings.SAMLOOP_REDIS_PREFIX)
        jobs = CounterMetricFamily("samloop_training_jobs", "Training jobs ended, by outcome", labels=["outcome"])
        seconds = HistogramMetricFamily("samloop_training_job_seconds", "Training job durations, by outcome",
                                        labels=["outcome"])
        for outcome, values in stats.items():
            jobs.add_metric([outcome], values["count"])
            buckets = [("+Inf" if math.isinf(b) else f"{b:g}", n) for b, n in values["buckets"]]
            seconds.add_metric([outcome], buckets, values["sum"])
        yield jobs
        yield seconds

    def _versions(self) -> Iterator[Metric]:
        services = self.services
        active = GaugeMetricFamily("samloop_active_adapter_version", "The registry's active adapter version "
                                   "per project (0: none)", labels=["project"])
        served = GaugeMetricFamily("samloop_served_adapter_version", "The adapter version predictions use per "
                                   "project: pinned, else active (0: the untrained base model)", labels=["project"])
        projects = set(services.registry.projects()) | set(services.store.projects())
        for project in sorted(projects, key=lambda p: (len(p), p)):
            version = services.registry.active_version(project)
            choice = services.models.choose(project, services.store.get(project).pinned_version)
            active.add_metric([project], version or 0)
            served.add_metric([project], choice.version or 0)
        yield active
        yield served


def exposition(services: Any) -> bytes:
    """The text format: this process' metrics (default registry) plus the service's, read now."""
    scraped = CollectorRegistry(auto_describe=False)
    scraped.register(ServiceCollector(services))
    return generate_latest(REGISTRY) + generate_latest(scraped)


def metrics_endpoint(request: Request) -> Response:
    """GET /metrics (a plain ``def``: reading Redis and the registry must not block the event loop)."""
    return Response(exposition(request.app.state.services), media_type=CONTENT_TYPE_LATEST)
