"""Model-management requests."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from kronk.api.limits import check_model_name, limits_of


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
