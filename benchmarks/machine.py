"""The machine a benchmark ran on: CPU, cores, memory, torch build and threads, load average."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in info:
            info[key.strip()] = value.strip()
    return info


def _mem_total_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def describe() -> dict[str, Any]:
    """JSON-safe description of this machine and software, taken at the start of a run."""
    import torch

    from training.inference.runtime import autocast_dtype, cpu_has_native_bf16

    cpu = _cpuinfo()
    on_gpu = torch.cuda.is_available()
    device = f"cuda ({torch.cuda.get_device_name(0)})" if on_gpu else "cpu"
    # What the backend's PRECISION=auto picks here: the optimized run's precision.
    auto_dtype = autocast_dtype(torch.device("cuda" if on_gpu else "cpu"), "auto")
    return {
        "cpu_model": cpu.get("model name", platform.processor() or "unknown"),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "native_bf16": cpu_has_native_bf16(),
        "auto_precision": "fp32" if auto_dtype is None else "bf16",
        "memory_gb": _mem_total_gb(),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "device": device,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": load_average(),
        "git_commit": _git("rev-parse", "--short", "HEAD") or "unknown (not a git checkout)",
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no", "--", "backend", "training")),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
