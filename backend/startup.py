"""What stops ``python -m backend`` before it serves, said in one line: ``error: <what to fix>``, exit 2.

A refusal the environment causes (a bad setting, an unknown SAM_MODEL, a checkpoint that cannot be
downloaded or does not fit) is the operator's to fix, so it gets a sentence, not a stack trace. The
services are built here, before uvicorn starts, for that reason: an exception in the app's lifespan
would reach the terminal as uvicorn's traceback and "Application startup failed". Anything else
still raises with its traceback: that is a bug to report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ValidationError

from backend.settings import Settings

if TYPE_CHECKING:
    from backend.services import Services

__all__ = ["StartupError", "read_settings", "start_services"]


class StartupError(Exception):
    """The environment stops the start; the message (one line) says what to fix."""


def describe_settings_error(exc: ValidationError) -> str:
    """Every problem of ``exc`` in one line, each led by the variable it concerns."""
    problems = []
    for error in exc.errors(include_url=False):
        name = ".".join(str(part) for part in error.get("loc", ()))
        message = error.get("msg", "invalid").removeprefix("Value error, ")
        if error.get("type") != "value_error":  # pydantic's own words do not repeat the value
            message = f"{message} (got {error.get('input')!r})"
        problems.append(message if not name or name in message else f"{name}: {message}")
    return "; ".join(problems) or str(exc).splitlines()[0]


def read_settings() -> Settings:
    """``Settings()`` from the environment; a bad value is a ``StartupError`` naming the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        raise StartupError(describe_settings_error(exc)) from None


def check_base_model(settings: Settings) -> None:
    """DEVICE is there, SAM_MODEL names a model, and its weights are at hand (downloading the official
    ones once). Done before Redis and the training worker start, so a refusal leaves nothing running.
    """
    # The model stack is imported here, not above: it takes seconds, and a bad setting is said at once.
    from training.inference.runtime import resolve_device
    from training.model.weights import CheckpointError, resolve_checkpoint

    try:
        resolve_device(settings.DEVICE)
    except ValueError as exc:  # DEVICE=cuda where torch sees none (the name itself is checked by Settings)
        raise StartupError(str(exc)) from None
    try:
        resolve_checkpoint(settings.SAM_MODEL, settings.SAM_CHECKPOINT, settings.SAMLOOP_MODEL_CACHE)
    except CheckpointError as exc:
        raise StartupError(str(exc)) from None
    except ValueError as exc:  # resolve_checkpoint checks the model name first
        raise StartupError(f"SAM_MODEL: {exc}") from None


def start_services(settings: Settings) -> Services:
    """``build_services(settings)`` after ``check_base_model``; a refusal is a ``StartupError``."""
    from backend.services import build_services
    from training.model.weights import CheckpointError

    check_base_model(settings)
    try:
        return build_services(settings)
    except CheckpointError as exc:  # the file exists but does not load as SAM_MODEL (another model's weights)
        raise StartupError(str(exc)) from None
