"""Model-management requests."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from kronk.api.limits import check_model_name, limits_of
from kronk.serving.pool import parse_duration


class PullRequest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    model: str = Field(min_length=1, description="A catalog name, hf.co/<org>/<repo>/<file.gguf> or "
                       "hf.co/<org>/<repo>:<QUANT>", validation_alias="model")
    stream: bool = False

    @field_validator("model")
    @classmethod
    def _model_name(cls, v: str, info: ValidationInfo) -> str:
        check_model_name(v, limits_of(info))
        return v


class LoadRequest(BaseModel):
    """``POST /v1/models/{id}/load``'s optional body."""

    model_config = ConfigDict(extra="allow")
    keep_alive: float | str | None = Field(default=None, description="How long the model stays loaded once idle: "
                                           "seconds or a duration (\"5m\"); -1 keeps it loaded.")

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive(cls, v: float | str | None) -> float | None:
        return None if v is None else parse_duration(v)
