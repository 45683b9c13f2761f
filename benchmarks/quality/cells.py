"""Benchmark cells: one JSON file per (method, labeled images, repeat), and peak memory of a run.

A cell is written when it is finished (to a temporary name, then renamed), so an interrupted run
leaves only whole cells; a rerun with the same settings loads them instead of training again. Each
cell carries the fingerprint of the settings and data it was made with: a cell of other settings is
never reused (it is recomputed and overwritten).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class CellKey:
    method: str
    labeled: int
    repeat: int

    @property
    def name(self) -> str:
        return f"{self.method}-n{self.labeled:03d}-r{self.repeat}"


class CellStore:
    """Finished cells under ``folder``, valid for one settings ``fingerprint``."""

    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder = folder
        self.fingerprint = fingerprint

    def path(self, key: CellKey) -> Path:
        return self.folder / f"{key.name}.json"

    def load(self, key: CellKey) -> dict[str, Any] | None:
        """The finished cell for ``key`` under these settings, or None."""
        try:
            cell = json.loads(self.path(key).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return cell if cell.get("fingerprint") == self.fingerprint else None

    def save(self, key: CellKey, cell: dict[str, Any]) -> dict[str, Any]:
        self.folder.mkdir(parents=True, exist_ok=True)
        cell = {"fingerprint": self.fingerprint, **cell}
        partial = self.path(key).with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(cell, indent=1, sort_keys=True))
        os.replace(partial, self.path(key))
        return cell


def rss_mb() -> float | None:
    """This process's resident memory now (Linux /proc), in MB."""
    try:
        resident = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident * PAGE_BYTES / 2**20


def _release_free_memory() -> None:
    """Hand memory that earlier cells freed back to the OS (glibc's ``malloc_trim``): otherwise a cell
    reuses it without a new page, and its growth reads near zero. A no-op where there is no glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Peak memory while the ``with`` block runs.

    CPU: resident memory sampled every ``interval`` seconds by a thread (torch's kernels release the
    GIL, so the sampler runs during them); ``ru_maxrss`` cannot serve, it never goes down between runs.
    ``peak_rss_mb`` is the process's peak (model, data and all earlier allocations still held);
    ``growth_mb`` the rise over the start (after freed memory went back to the OS), which is what this
    run needed on top of what the process held. CUDA: the allocator's own
    peak of the block, when a GPU is in use.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.start_mb: float | None = None
        self.peak_mb: float | None = None
        self.cuda_peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            now = rss_mb()
            if now is not None:
                self.peak_mb = max(self.peak_mb or 0.0, now)
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        _release_free_memory()
        self.start_mb = rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if torch.cuda.is_available():
            self.cuda_peak_mb = torch.cuda.max_memory_allocated() / 2**20

    def to_dict(self) -> dict[str, float | None]:
        growth = None if self.peak_mb is None or self.start_mb is None else max(0.0, self.peak_mb - self.start_mb)
        return {"peak_rss_mb": _round(self.peak_mb), "growth_mb": _round(growth),
                "cuda_peak_mb": _round(self.cuda_peak_mb)}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
