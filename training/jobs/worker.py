"""``python -m training.jobs.worker``: an rq worker for samloop's training queue(s) on REDIS_URL.

Each worker process runs one job at a time; more workers (on this or other machines sharing
Redis and Label Studio) run more projects at once. A GPU worker takes one job at a time by
running exactly one worker process per GPU, e.g. ``CUDA_VISIBLE_DEVICES=0 python -m
training.jobs.worker --worker-class spawn``: ``spawn`` starts every job in a fresh interpreter (no CUDA
state inherited across ``fork``, GPU memory returned when the job ends).

Worker classes: ``fork`` (default: each job in a forked child, so a crash, OOM kill or timeout
takes down only that job; the worker imports the job's code and builds the base model before it takes
jobs, so every child inherits them), ``spawn`` (a fresh process per job), ``simple`` (in this process: for
tests and debugging; a timeout is still enforced with SIGALRM).

``--nice N`` (default ``$SAMLOOP_WORKER_NICE``, else 0) lowers the worker's CPU priority, and its
jobs' with it: on a machine that also serves clicks, training then takes only the cycles that
clicks leave (the embedded worker of ``make run`` starts at nice 10).

rq's scheduler runs inside the worker (``--no-scheduler`` turns it off): it is what re-enqueues a
failed job after its Retry back-off. Registry maintenance (which retries jobs whose worker was
killed) runs every ``--maintenance-interval`` seconds.

When the worker's loop ends on an error (Redis restarted, a connection lost mid-job), the process waits
for Redis and starts a fresh worker: only SIGTERM/SIGINT, ``--burst`` and ``--max-jobs`` end it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable

import redis
from rq import Queue, SimpleWorker, SpawnWorker, Worker

from training.jobs.redis_conn import connect
from training.jobs.scheduler import DEFAULT_QUEUE

__all__ = ["WORKER_CLASSES", "build_worker", "main"]

log = logging.getLogger(__name__)

# After a worker's loop ends on an error: the first wait before reconnecting, the longest, and how long a
# worker must have run for the next error to start from the first wait again.
RECONNECT_FIRST_S, RECONNECT_MAX_S, RECONNECT_RESET_S = 1.0, 30.0, 60.0

WORKER_CLASSES: dict[str, type[Worker] | type[SimpleWorker]] = {
    "fork": Worker, "spawn": SpawnWorker, "simple": SimpleWorker,
}


def build_worker(connection, queues: list[str], worker_class: str = "fork", name: str | None = None,
                 maintenance_interval: int = 60) -> Worker | SimpleWorker:
    """An rq worker on ``queues`` (highest priority first)."""
    if worker_class not in WORKER_CLASSES:
        raise ValueError(f"worker class {worker_class!r} is not one of {', '.join(WORKER_CLASSES)}")
    if not queues or not all(isinstance(q, str) and q for q in queues):
        raise ValueError(f"need at least one queue name, got {queues!r}")
    cls = WORKER_CLASSES[worker_class]
    return cls([Queue(q, connection=connection) for q in queues], connection=connection, name=name,
               maintenance_interval=maintenance_interval)


def _niceness(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 19:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 (normal) to 19 (lowest priority), "
                                         f"got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.jobs.worker",
                                     description="Run a samloop training worker (rq) against REDIS_URL.")
    parser.add_argument("--url", default=os.environ.get("REDIS_URL", ""),
                        help="Redis URL (default: $REDIS_URL); redis://, rediss:// or unix://")
    parser.add_argument("--queues", default=os.environ.get("SAMLOOP_QUEUES", DEFAULT_QUEUE),
                        help=f"comma-separated queue names, highest priority first (default: {DEFAULT_QUEUE})")
    parser.add_argument("--worker-class", choices=sorted(WORKER_CLASSES), default="fork")
    parser.add_argument("--burst", action="store_true", help="stop when the queues are empty")
    parser.add_argument("--max-jobs", type=int, default=None)
    parser.add_argument("--name", default=None)
    parser.add_argument("--no-scheduler", action="store_true", help="do not run rq's scheduler (retry back-off)")
    parser.add_argument("--maintenance-interval", type=int, default=60)
    parser.add_argument("--nice", type=_niceness, default=os.environ.get("SAMLOOP_WORKER_NICE", "0"),
                        help="CPU priority of the worker and its jobs, 0 (normal) to 19 (lowest); "
                             "default: $SAMLOOP_WORKER_NICE or 0")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = args.log_level.upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Our own log lines say what happens; the SDK and httpx would add one line per HTTP request.
    for noisy in ("label_studio_sdk", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    if not args.url:
        print("error: REDIS_URL is not set. Set it to the Redis the backend uses, or run `make run`, which "
              "starts an embedded Redis together with a worker.", file=sys.stderr)
        return 2
    try:
        connection = connect(args.url, socket_timeout=None)
        queues = [q.strip() for q in args.queues.split(",") if q.strip()]
        worker = build_worker(connection, queues, args.worker_class, args.name, args.maintenance_interval)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.nice:
        os.nice(args.nice)
    if args.worker_class == "fork":
        preload()
    log.info("training worker %s (%s, nice %d) listening on %s at %s", worker.name, args.worker_class,
             os.getpriority(os.PRIO_PROCESS, 0), ", ".join(queues), args.url.split("@")[-1])
    return _work_until_stopped(worker, args, level, lambda: build_worker(
        connection, queues, args.worker_class, args.name, args.maintenance_interval))


def preload() -> None:
    """Import the job's code and build the base model of this worker's settings once, before any job: a
    forked job inherits both instead of importing torch and building the model itself (seconds per job).

    Built on one thread: an OpenMP thread pool started here would not exist in a forked child that still
    believes in it, and the job would hang at its first parallel op. The pool is made in each job.
    """
    started = time.monotonic()
    try:
        from training.inference.runtime import intra_op_threads
        from training.jobs.training_job import preload_base_model
        from training.pipeline.settings import JobSettings

        with intra_op_threads(1):
            preload_base_model(JobSettings.from_env())
    except Exception as exc:  # the jobs load what they need themselves; a worker must still start
        log.warning("could not preload the base model (%s: %s); each job loads it", type(exc).__name__, exc)
        return
    log.info("base model preloaded in %.1f s", time.monotonic() - started)


def _work_until_stopped(worker: Worker | SimpleWorker, args: argparse.Namespace, level: str,
                        rebuild: Callable[[], Worker | SimpleWorker]) -> int:
    """Run ``worker``; when its loop ends on an error (Redis restarted, a lost connection), wait for
    Redis and run a fresh one, so a Redis restart does not need someone to restart the worker."""
    pause = RECONNECT_FIRST_S
    while True:
        started = time.monotonic()
        try:
            worker.work(burst=args.burst, max_jobs=args.max_jobs, with_scheduler=not args.no_scheduler,
                        logging_level=level)
        except redis.RedisError as exc:  # rq's teardown talks to Redis too
            log.warning("worker %s: Redis failed while stopping (%s)", worker.name, exc)
        # rq notes when SIGTERM/SIGINT (or its shutdown command) asked to stop; burst and max_jobs end on purpose.
        if args.burst or args.max_jobs is not None or getattr(worker, "_shutdown_requested_date", None):
            return 0
        if time.monotonic() - started > RECONNECT_RESET_S:
            pause = RECONNECT_FIRST_S
        log.warning("worker %s stopped on an error; starting a fresh one once Redis answers", worker.name)
        _wait_for_redis(worker.connection, pause)
        pause = min(pause * 2, RECONNECT_MAX_S)
        with contextlib.suppress(redis.RedisError):
            worker.register_death()  # frees its name for a worker started with --name
        worker = rebuild()


def _wait_for_redis(connection: redis.Redis, pause: float) -> None:
    while True:
        time.sleep(pause)
        try:
            connection.ping()
            return
        except redis.RedisError as exc:
            log.warning("Redis still unreachable (%s); trying again in %.0f s", exc, pause)
            pause = min(pause * 2, RECONNECT_MAX_S)


if __name__ == "__main__":
    sys.exit(main())
