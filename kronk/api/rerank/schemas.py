"""``POST /v1/rerank`` request (Cohere's and Jina's shape, as llama-server takes it)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from kronk.api.limits import DEFAULT_LIMITS, check_count, limits_of
from kronk.api.schemas import ModelRequest


class RerankDocument(BaseModel):
    """A document as an object (Cohere, Jina): its ``text`` is ranked; other fields are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    text: str


class RerankRequest(ModelRequest):
    query: str = Field(min_length=1)
    documents: list[str | RerankDocument] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=1, description="Answer the best top_n documents (default: all).")
    return_documents: bool = Field(default=False, description="Include each result's document text.")
    # the server's max_embedding_tokens when validated: counted by the engine, which tokenizes the pairs
    _token_budget: int = PrivateAttr(default=DEFAULT_LIMITS.max_embedding_tokens)

    @field_validator("documents", mode="before")
    @classmethod
    def _documents_count(cls, v: Any, info: ValidationInfo) -> Any:
        check_count(v, limits_of(info).max_embedding_inputs, "documents", "max_embedding_inputs")
        return v

    @model_validator(mode="after")
    def _budget(self, info: ValidationInfo) -> RerankRequest:
        self._token_budget = limits_of(info).max_embedding_tokens
        return self

    @property
    def token_budget(self) -> int:
        return self._token_budget

    def texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]
