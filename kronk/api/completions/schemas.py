"""``POST /v1/completions`` request."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from kronk.api.schemas import ResponseFormat, SamplingFields


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None
    best_of: int | None = Field(default=None, ge=1, le=1)
    response_format: ResponseFormat | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not v:
                raise ValueError("prompt must not be empty")
            if all(isinstance(x, int) for x in v):
                return v
            if len(v) != 1:
                raise ValueError("one prompt per request is supported (send several requests instead)")
            return v[0]
        return v

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens
