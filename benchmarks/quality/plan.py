"""What one quality benchmark run measures: methods, labeled counts, repeats, budgets, data, base model."""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from testkit.standin import build_standin
from testkit.standin_clicks import CLICK_STEPS
from training.inference.devices import check_device

# Bump when a method's training or scoring changes: cells of older code are then recomputed.
CELL_VERSION = 2  # 2: the RITM / SimpleClick clicker with mask feedback (training.learn.clicks)
METHOD_NAMES = ("decoder", "encoder", "full", "promptless")
DEFAULT_CACHE = Path.home() / ".cache" / "samloop"


@dataclass
class QualityPlan:
    """A benchmark run's settings; ``check`` raises ValueError naming a bad one.

    ``checkpoint`` None means the pretrained stand-in of ``testkit.standin`` (built once into
    ``cache/standin`` with ``standin`` as its build options; by default with its clicks stage, as the gate
    tests build it, so SAM's decoder clicks a little); ``data`` None means the stand-in's
    synthetic target family (``pool_images`` to draw from, ``held_out`` images to score on).
    ``steps`` and ``budget_seconds`` both bound each training run; whichever ends first.
    """

    mode: str = "full"
    labeled: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    repeats: int = 3
    methods: list[str] = field(default_factory=lambda: list(METHOD_NAMES))
    steps: int = 200
    budget_seconds: float | None = 40.0
    batch_size: int = 4
    image_size: int = 256
    model: str = "vit_t"
    checkpoint: str | None = None
    data: Path | None = None
    images: Path | None = None
    label_config: Path | None = None
    pool_images: int = 32
    held_out: int = 12
    max_clicks: int = 20
    precision: str = "auto"
    device: str = "cpu"
    seed: int = 0
    cache: Path = DEFAULT_CACHE
    standin: dict[str, Any] = field(default_factory=lambda: {"click_steps": CLICK_STEPS})
    note: str = ""

    def check(self) -> QualityPlan:
        unknown = [m for m in self.methods if m not in METHOD_NAMES]
        if unknown or not self.methods:
            raise ValueError(f"methods {unknown or self.methods} are not among {', '.join(METHOD_NAMES)}")
        if not self.labeled or any(not isinstance(n, int) or n < 1 for n in self.labeled):
            raise ValueError(f"labeled counts must be positive integers, got {self.labeled!r}")
        for name in ("repeats", "steps", "batch_size", "held_out", "pool_images", "max_clicks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.budget_seconds is not None and self.budget_seconds <= 0:
            raise ValueError(f"budget_seconds must be positive, got {self.budget_seconds!r}")
        check_device(self.device)
        if self.checkpoint is None and self.model != "vit_t":
            raise ValueError(f"the pretrained stand-in is a vit_t; give --checkpoint for {self.model}")
        _check_standin(self.standin)
        self.labeled = sorted(set(self.labeled))
        return self

    def fingerprint(self, data_digest: str, base_digest: str) -> str:
        """Everything a cell's numbers depend on, except which cells are asked for."""
        selecting = {"mode", "labeled", "repeats", "methods", "cache", "note", "data", "images", "label_config"}
        if self.device == "cpu":
            selecting.add("device")  # cells made before the option existed were all CPU cells
        settings = {k: v for k, v in asdict(self).items() if k not in selecting}
        settings.update(version=CELL_VERSION, data=data_digest, base=base_digest)
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


def _check_standin(options: dict[str, Any]) -> None:
    """The stand-in's build options must be ``build_standin``'s: integers, at least 1 (``click_steps`` and
    ``seed`` at least 0)."""
    known = [name for name in inspect.signature(build_standin).parameters if name != "cache_dir"]
    unknown = [name for name in options if name not in known]
    if unknown:
        raise ValueError(f"stand-in options {unknown} are not among {', '.join(known)}")
    for name, value in options.items():
        least = 0 if name in ("click_steps", "seed") else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise ValueError(f"stand-in option {name} must be an integer >= {least}, got {value!r}")


def quick_plan(**overrides: Any) -> QualityPlan:
    """The smoke run: all four methods at 1 and 4 labeled images, one repeat, 40 steps, 6 held-out."""
    settings: dict[str, Any] = {"mode": "quick", "labeled": [1, 4], "repeats": 1, "steps": 40, "budget_seconds": 20.0,
                                "pool_images": 8, "held_out": 6}
    return QualityPlan(**{**settings, **overrides})
