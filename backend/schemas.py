"""Request bodies Label Studio sends, as pydantic models (unknown extra fields are kept, not refused:
LS adds fields between versions)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from training.labelstudio.projects import project_id


class _LSModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class SetupRequest(_LSModel):
    """POST /setup: sent when a backend is connected or its project's config changes."""

    project: str
    label_config: str = Field(alias="schema")
    hostname: str | None = None
    access_token: str | None = None
    model_version: str | None = None
    extra_params: dict[str, Any] | str | None = None

    @field_validator("project", mode="before")
    @classmethod
    def _project(cls, value: Any) -> str:
        return project_id(value)


class TaskModel(BaseModel):
    """A task inside /predict. Its other fields are dropped unparsed: LS sends each task's stored
    predictions and annotations along (megabytes of brush RLE) and prediction reads none of them."""

    model_config = ConfigDict(extra="ignore")

    id: int | None = None
    data: dict[str, Any]
    project: int | None = None


class PredictParams(_LSModel):
    login: str | None = None
    password: str | None = None
    context: dict[str, Any] | None = None


class PredictRequest(_LSModel):
    """POST /predict: a batch (no context) or one interactive task (``params.context.result``)."""

    tasks: list[TaskModel]
    project: str | None = None
    label_config: str | None = None
    params: PredictParams | None = None
    model_version: str | None = None

    @field_validator("project", mode="before")
    @classmethod
    def _project(cls, value: Any) -> str | None:
        return None if value is None or value == "" else project_id(value)

    def project_id(self) -> str | None:
        """From ``project``, else the first task's ``project``."""
        if self.project is not None:
            return self.project
        for task in self.tasks:
            if task.project is not None:
                return project_id(task.project)
        return None

    @property
    def context(self) -> dict[str, Any] | None:
        return self.params.context if self.params else None


class WebhookRequest(_LSModel):
    """POST /webhook: ``{action, project, ...}``; the rest depends on the action."""

    action: str = Field(min_length=1, max_length=64)


class ActivateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)
