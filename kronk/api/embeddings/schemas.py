"""``POST /v1/embeddings`` request."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from kronk.api.limits import DEFAULT_LIMITS, check_count, limits_of
from kronk.api.schemas import ModelRequest


class EmbeddingRequest(ModelRequest):
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    # the server's max_embedding_tokens when validated: counted by the engine, which tokenizes the inputs
    _token_budget: int = PrivateAttr(default=DEFAULT_LIMITS.max_embedding_tokens)

    @model_validator(mode="after")
    def _budget(self, info: ValidationInfo) -> EmbeddingRequest:
        self._token_budget = limits_of(info).max_embedding_tokens
        return self

    @property
    def token_budget(self) -> int:
        return self._token_budget

    @field_validator("input", mode="before")
    @classmethod
    def _input_count(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, list) and v and not all(isinstance(x, int) for x in v):  # a list of token ids is one
            check_count(v, limits_of(info).max_embedding_inputs, "inputs", "max_embedding_inputs")
        return v

    @field_validator("input")
    @classmethod
    def _not_empty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("input must not be empty")
        if isinstance(v, str) and not v:
            raise ValueError("input must not be an empty string")
        return v

    def inputs(self) -> list[str] | list[list[int]]:
        v = self.input
        if isinstance(v, str):
            return [v]
        if all(isinstance(x, int) for x in v):
            return [list(v)]  # type: ignore[list-item]
        return list(v)  # type: ignore[return-value]
