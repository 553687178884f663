"""``POST /v1/chat/completions`` request."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from kronk.api.limits import (
    RESERVED_TEMPLATE_KWARGS,
    check_count,
    check_repeat_total,
    limits_of,
    schema_repeats,
)
from kronk.api.schemas import LimitedSchema, MaxTokens, ResponseFormat, SamplingFields
from kronk.parsers.types import ToolCall


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "input_text"]
    text: str


class OtherPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["image_url", "input_audio", "file", "image", "refusal"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart | OtherPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    @model_validator(mode="after")
    def _content_needed(self) -> ChatMessage:
        if self.content is None and self.role not in ("assistant",):
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.\-]+$")
    description: str | None = None
    parameters: LimitedSchema = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"]
    function: FunctionDef


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: dict[str, str]


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: MaxTokens = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    # vLLM's name: the last (assistant) message is a prefill the model goes on writing; the answer is what follows
    continue_final_message: bool = Field(default=False, description="The last message is an assistant message "
                                         "the model continues (a prefill); the answer holds only what follows.")
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    chat_template_kwargs: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"propertyNames": {"not": {"enum": sorted(RESERVED_TEMPLATE_KWARGS)}}})

    @field_validator("messages", mode="before")
    @classmethod
    def _messages_count(cls, v: Any, info: ValidationInfo) -> Any:
        check_count(v, limits_of(info).max_messages, "messages", "max_messages")
        return v

    @field_validator("tools", mode="before")
    @classmethod
    def _tools_count(cls, v: Any, info: ValidationInfo) -> Any:
        check_count(v, limits_of(info).max_tools, "tools", "max_tools")
        return v

    @field_validator("tools")
    @classmethod
    def _tool_schemas_together(cls, v: list[Tool] | None, info: ValidationInfo) -> list[Tool] | None:
        # each tool's schema is within the limits (FunctionDef); a forced call compiles them into one grammar
        lim = limits_of(info)
        total = sum(schema_repeats(t.function.parameters, lim.max_schema_repeat) for t in v or ())
        check_repeat_total(total, lim, "the tools' parameter schemas'")
        return v

    @field_validator("chat_template_kwargs")
    @classmethod
    def _no_reserved_kwargs(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        taken = sorted(set(v or ()) & RESERVED_TEMPLATE_KWARGS)
        if taken:
            raise ValueError(f"chat_template_kwargs may not set {', '.join(taken)}: the server renders the "
                             f"template with {'it' if len(taken) == 1 else 'them'} (send messages and tools as "
                             f"request fields)")
        return v

    @model_validator(mode="after")
    def _checks(self) -> ChatCompletionRequest:
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {t.function.name for t in self.tools or []}
            want = self.tool_choice.function.get("name")
            if want not in names:
                raise ValueError(f"tool_choice names function {want!r}, which is not in tools")
        if self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice is 'required' but no tools were given")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens
