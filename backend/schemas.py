"""Request bodies Label Studio sends, as pydantic models (unknown extra fields are kept, not refused:
LS adds fields between versions).

Everything a request can make the backend keep (project ids, label configs) is bounded here, inside
validation, so a bad value is a 422 naming the field and never reaches Redis.
"""

from __future__ import annotations

from typing import Any
from xml.parsers import expat

from pydantic import BaseModel, ConfigDict, Field, field_validator

from training.labelstudio.projects import project_key, project_number

# Label configs are kept per project in Redis: the largest real ones (big taxonomies) are tens of KB.
MAX_LABEL_CONFIG_CHARS = 1_000_000


def _refuse_declarations(*_: object) -> None:
    raise ValueError("label_config must not declare a DOCTYPE or entities (Label Studio configs never do)")


def check_label_config_xml(text: str) -> str:
    """``text`` if it is well-formed XML without DTD declarations (no entity expansion bombs), else ValueError.

    Whether it is a usable Label Studio config is checked later (a per-task error): a config that is not
    even XML is a malformed request.
    """
    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = _refuse_declarations
    parser.EntityDeclHandler = _refuse_declarations
    try:
        parser.Parse(text, True)
    except expat.ExpatError as exc:
        raise ValueError(f"label_config is not valid XML: {expat.ErrorString(exc.code)} "
                         f"(line {exc.lineno}, column {exc.offset})") from None
    return text


class _LSModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class SetupRequest(_LSModel):
    """POST /setup: sent when a backend is connected or its project's config changes."""

    project: str
    label_config: str = Field(alias="schema", max_length=MAX_LABEL_CONFIG_CHARS)
    hostname: str | None = None
    access_token: str | None = None
    model_version: str | None = None
    extra_params: dict[str, Any] | str | None = None

    @field_validator("project", mode="before")
    @classmethod
    def _project(cls, value: Any) -> str:
        return project_key(value)


class TaskModel(BaseModel):
    """A task inside /predict. Its other fields are dropped unparsed: LS sends each task's stored
    predictions and annotations along (megabytes of brush RLE) and prediction reads none of them."""

    model_config = ConfigDict(extra="ignore")

    id: int | None = Field(None, ge=-(2**63), lt=2**63)
    data: dict[str, Any]
    project: int | None = None

    @field_validator("project", mode="before")
    @classmethod
    def _project(cls, value: Any) -> int | None:
        # Checked here, inside validation: a -5 found later raised outside it and answered 500.
        return None if value is None else project_number(value)


class PredictParams(_LSModel):
    login: str | None = None
    password: str | None = None
    context: dict[str, Any] | None = None


class PredictRequest(_LSModel):
    """POST /predict: a batch (no context) or one interactive task (``params.context.result``)."""

    tasks: list[TaskModel]
    project: str | None = None
    label_config: str | None = Field(None, max_length=MAX_LABEL_CONFIG_CHARS)
    params: PredictParams | None = None
    model_version: str | None = None

    @field_validator("project", mode="before")
    @classmethod
    def _project(cls, value: Any) -> str | None:
        return None if value is None or value == "" else project_key(value)

    @field_validator("label_config")
    @classmethod
    def _label_config(cls, value: str | None) -> str | None:
        # An empty config means "none sent" (it must not replace the stored one).
        if value is None or not value.strip():
            return None
        return check_label_config_xml(value)

    def project_ref(self) -> str | None:
        """From ``project``, else the first task's ``project`` (both already checked ids)."""
        if self.project is not None:
            return self.project
        for task in self.tasks:
            if task.project is not None:
                return str(task.project)
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
