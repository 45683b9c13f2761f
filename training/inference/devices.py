"""The device rule, without torch: which device names a setting may hold.

``auto`` (CUDA when torch sees one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``. Checked where
settings are read (backend settings, job settings) and applied by ``runtime.resolve_device``.
"""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")


def check_device(requested: str) -> str:
    """``requested`` if it names a device by the rule above, else ValueError."""
    if requested in DEVICES or (requested.startswith("cuda:") and requested[5:].isdigit()):
        return requested
    raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {requested!r}")
