"""Request fields shared by the endpoint families: defined once, so limits agree everywhere."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Temperature = Annotated[float | None, Field(default=None, ge=0.0, le=2.0)]
TopP = Annotated[float | None, Field(default=None, gt=0.0, le=1.0)]
TopK = Annotated[int | None, Field(default=None, ge=0)]
MinP = Annotated[float | None, Field(default=None, ge=0.0, le=1.0)]
Penalty = Annotated[float | None, Field(default=None, ge=-2.0, le=2.0)]
RepeatPenalty = Annotated[float | None, Field(default=None, gt=0.0, le=10.0)]
MaxTokens = Annotated[int | None, Field(default=None, ge=1)]
Seed = Annotated[int | None, Field(default=None)]
Stop = Annotated[str | list[str] | None, Field(default=None)]


class ModelRequest(BaseModel):
    """Every request names a model. Clients send fields a local server has no use for (user, metadata,
    store, ...): they are accepted."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class SamplingFields(ModelRequest):
    temperature: Temperature = None
    top_p: TopP = None
    top_k: TopK = None
    min_p: MinP = None
    presence_penalty: Penalty = None
    frequency_penalty: Penalty = None
    repeat_penalty: RepeatPenalty = None
    repeat_last_n: int | None = Field(default=None, ge=-1)
    seed: Seed = None
    stop: Stop = None
    max_tokens: MaxTokens = None
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None
    echo: bool = False

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if len(items) > 16:
            raise ValueError("at most 16 stop sequences are allowed")
        if any(not isinstance(s, str) for s in items):
            raise ValueError("stop sequences must be strings")
        return v

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for k, b in (v or {}).items():
            try:
                int(k)
            except ValueError:
                raise ValueError(f"logit_bias keys must be token ids, got {k!r}") from None
            if not -100 <= b <= 100:
                raise ValueError(f"logit_bias values must be between -100 and 100, got {b}")
        return v

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_needed(self) -> ResponseFormat:
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("response_format of type json_schema needs json_schema.schema")
        return self
