"""Model-management requests."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PullRequest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    model: str = Field(min_length=1, description="A catalog name, hf.co/<org>/<repo>/<file.gguf> or "
                       "hf.co/<org>/<repo>:<QUANT>", validation_alias="model")
    stream: bool = False
