"""The one place that spells a model_version string (used by /setup, /predict and /versions).

Label Studio compares the model_version from /setup with the one stored on predictions to decide
which tasks are already predicted, so every answer must use the same spelling.
"""

from __future__ import annotations

from training.model.artifact import BaseIdentity
from training.model.loading import model_label


def model_version(base: BaseIdentity, project: str | None, version: int | None) -> str:
    """``samloop-vit_t-1024-p3-v2`` for adapter v2 of project 3; ``samloop-vit_t-1024-untrained`` without one.

    Random base weights show as ``samloop-vit_t-1024-RANDOM-WEIGHTS-...`` (from ``model_label``).
    """
    label = model_label(base)
    if version is None:
        return f"{label}-untrained"
    if not project:
        raise ValueError(f"adapter version {version} needs a project id, got {project!r}")
    return f"{label}-p{project}-v{version}"
