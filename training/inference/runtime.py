"""Where and how models run: the device rule, precision, and intra-op thread caps on a shared CPU."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from cachetools import TTLCache, cached

from training.inference.devices import check_device

# How long one reading of the free cores is reused: /proc is scanned at most this often, not per call.
FREE_CORES_TTL_SECONDS = 0.5
def resolve_device(requested: str) -> torch.device:
    """The torch device for auto|cpu|cuda|cuda:N: auto is CUDA when torch sees one, else the CPU.

    Raises:
        ValueError: a malformed name, or CUDA asked for where torch sees none.
    """
    check_device(requested)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"DEVICE={requested} but torch sees no CUDA device (torch.cuda.is_available() is False)")
    return torch.device(requested)


def autocast_dtype(device: torch.device, requested: str = "auto") -> torch.dtype | None:
    """bf16 where the hardware runs it natively, else None (fp32). ``requested``: auto|bf16|fp32."""
    if requested == "fp32":
        return None
    if requested == "bf16":
        return torch.bfloat16
    if requested != "auto":
        raise ValueError(f"precision must be auto, bf16 or fp32, got {requested!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_native_bf16() else None


@functools.cache
def cpu_has_native_bf16() -> bool:
    # CPU flags do not change while the process runs; /proc/cpuinfo is read once.
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@cached(TTLCache(maxsize=1, ttl=FREE_CORES_TTL_SECONDS))
def free_cores() -> int:
    """CPU cores (of this process's affinity) that no other process's thread is running on now, at least 1.

    The kernel's count of runnable threads (/proc/loadavg) minus this process's own runnable
    threads (a just-finished op's helper threads may still be spinning). Without /proc: all cores.
    A reading is reused for ``FREE_CORES_TTL_SECONDS``: callers ask under the model lock, per click.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/proc/loadavg") as fh:
            running = int(fh.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return cores
    if running <= 1:  # only the caller: skip the per-thread scan
        return cores
    return max(1, cores - max(0, running - _own_running_threads()))


def _own_running_threads() -> int:
    count = 0
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        state = stat[stat.rfind(")") + 2 : stat.rfind(")") + 3]
        count += state == "R"
    return max(1, count)


def thread_steps(max_threads: int) -> tuple[int, ...]:
    """The thread counts a compiled model is warmed for: powers of two below ``max_threads``, and it.
    Dynamo guards on the count, so each one a click may run with is a compiled graph of its own."""
    steps = {max_threads}
    step = 1
    while step < max_threads:
        steps.add(step)
        step *= 2
    return tuple(sorted(steps))


def round_down(count: int, steps: tuple[int, ...]) -> int:
    """The largest of ``steps`` (ascending) not above ``count``, else the smallest."""
    return max((s for s in steps if s <= count), default=steps[0])


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads (the setting is per calling thread with
    OpenMP; callers serialise model work, e.g. under the model service's lock)."""
    previous = torch.get_num_threads()
    if previous == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
