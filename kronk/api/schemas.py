"""Request fields shared by the endpoint families: defined once, so limits agree everywhere."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from kronk.api.limits import check_count, check_model_name, check_schema, check_stop, limits_of
from kronk.serving.pool import parse_duration

Temperature = Annotated[float | None, Field(default=None, ge=0.0, le=2.0)]
TopP = Annotated[float | None, Field(default=None, gt=0.0, le=1.0)]
INT32_MAX = 2**31 - 1  # what llama.cpp takes as an int
INT64_MAX = 2**63 - 1

TopK = Annotated[int | None, Field(default=None, ge=0, le=INT32_MAX)]
MinP = Annotated[float | None, Field(default=None, ge=0.0, le=1.0)]
Penalty = Annotated[float | None, Field(default=None, ge=-2.0, le=2.0)]
RepeatPenalty = Annotated[float | None, Field(default=None, gt=0.0, le=10.0)]
MaxTokens = Annotated[int | None, Field(default=None, ge=1, le=INT64_MAX)]  # the context bounds it further
Seed = Annotated[int | None, Field(default=None)]
Stop = Annotated[str | list[str] | None, Field(default=None)]
MAX_CHOICES = 8  # n: choices per request, each a generation of its own
MAX_TOP_LOGPROBS = 20  # alternatives per token: chat's top_logprobs, completions' logprobs


def _limited_schema(v: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
    check_schema(v, limits_of(info))
    return v


# A JSON Schema a client sends (a response format's, a tool's parameters): within the schema limits.
LimitedSchema = Annotated[dict[str, Any] | None, AfterValidator(_limited_schema)]


class ModelRequest(BaseModel):
    """Every request names a model. Clients send fields a local server has no use for (user, metadata,
    store, ...): they are accepted."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    # Ollama's keep_alive: how long a pool model stays loaded after this request (seconds, or a duration such as
    # "5m", "1h30m", "250ms"; 0 unloads it after the answer, a negative value keeps it loaded)
    keep_alive: float | str | None = Field(default=None, description="How long the model stays loaded after "
                                           "this request: seconds or a duration (\"5m\"); 0 unloads it after the "
                                           "answer, -1 keeps it loaded.")

    @field_validator("model")
    @classmethod
    def _model_name(cls, v: str, info: ValidationInfo) -> str:
        check_model_name(v, limits_of(info))
        return v

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive(cls, v: float | str | None) -> float | None:
        return None if v is None else parse_duration(v)


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
    repeat_last_n: int | None = Field(default=None, ge=-1, le=INT32_MAX)
    seed: Seed = None
    stop: Stop = None
    max_tokens: MaxTokens = None
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0, le=INT32_MAX)
    # kronk/engine/repetition.py: end an answer that has degenerated into repeating itself (finish_reason
    # "length"). Unset: on, except for ignore_eos requests (they ask for exactly max_tokens tokens).
    repetition_guard: bool | None = Field(
        default=None, description="End an answer that degenerates into a loop (finish_reason \"length\"); "
        "default: on, except with ignore_eos.")
    n: int = Field(default=1, ge=1, le=MAX_CHOICES, description="Choices to generate, each its own generation "
                   f"(seed + i with a seed); at most {MAX_CHOICES}.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    # chat: true/false (top_logprobs says how many alternatives); completions: the alternatives per token, 0..20
    logprobs: bool | int | None = None
    echo: bool = False

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_limits(cls, v: Any, info: ValidationInfo) -> Any:
        check_stop(v, limits_of(info))
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        items = [v] if isinstance(v, str) else (v or [])
        if any(not isinstance(s, str) for s in items):
            raise ValueError("stop sequences must be strings")
        return v

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, v: bool | int | None) -> bool | int | None:
        if type(v) is int and not 0 <= v <= MAX_TOP_LOGPROBS:
            raise ValueError(f"logprobs asks for 0 to {MAX_TOP_LOGPROBS} alternatives per token, got {v}")
        return v

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _logit_bias_count(cls, v: Any, info: ValidationInfo) -> Any:
        check_count(v, limits_of(info).max_logit_bias, "logit_bias entries", "max_logit_bias")
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
    schema_: LimitedSchema = Field(default=None, alias="schema")
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


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads and validates its body itself (kronk/api/http.py): the request
    body's schema, from ``model``, with its ``$defs`` inlined (the OpenAPI document keeps its own ``$defs``
    elsewhere), so that the served OpenAPI schema documents the fields (and a fuzzer explores them)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, list):
            return [inline(v) for v in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):  # the request models are not recursive
            return {**inline(defs[ref.removeprefix("#/$defs/")]), **{k: inline(v) for k, v in node.items()
                                                                   if k != "$ref"}}
        return {k: inline(v) for k, v in node.items()}

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}
