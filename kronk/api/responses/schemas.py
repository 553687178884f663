"""``POST /v1/responses`` request: input items (messages, function calls and their outputs), function tools, the
text format, and the fields of a stored conversation (``store``, ``previous_response_id``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kronk.api.limits import Limits, check_count, check_repeat_total, limits_of, schema_repeats
from kronk.api.schemas import LimitedSchema, MaxTokens, SamplingFields

# OpenAI's documented bounds on metadata: 16 pairs, keys of at most 64 characters, values of at most 512.
MAX_METADATA = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_ID_LENGTH = 256  # a response id, call id or item id a client sends back (kronk's are much shorter)
MAX_USER_LENGTH = 512

TEXT_PARTS = ("input_text", "output_text", "text")
ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")


def _unsupported_parts(parts: Any) -> Any:
    """A content list holds text parts only (kronk's models read text): any other part is a clear 400."""
    if isinstance(parts, list):
        for i, p in enumerate(parts):
            kind = p.get("type") if isinstance(p, dict) else None
            if isinstance(kind, str) and kind not in (*TEXT_PARTS, "refusal"):
                raise ValueError(f"content[{i}] is a {kind!r} part; kronk's models read text only (send "
                                 f"input_text or output_text parts, or a string)")
    return parts


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["input_text", "output_text", "text"]
    text: str


class RefusalPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["refusal"]
    refusal: str


Part = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


def parts_text(content: str | list[TextPart | RefusalPart]) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.text if isinstance(p, TextPart) else p.refusal for p in content)


class MessageItem(BaseModel):
    """A message: the easy form ``{role, content}`` or an item ``{type: message, ...}`` (an output message sent
    back, with its id and status)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Part]

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, v: Any) -> Any:
        return _unsupported_parts(v)

    def text(self) -> str:
        return parts_text(self.content)


class FunctionCallItem(BaseModel):
    """A call the model made (an output item sent back as input)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["function_call"]
    call_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    name: str = Field(min_length=1, max_length=64)
    arguments: str


class FunctionCallOutputItem(BaseModel):
    """What the client's function returned, for the call ``call_id``."""

    model_config = ConfigDict(extra="allow")
    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    output: str | list[Part]

    @field_validator("output", mode="before")
    @classmethod
    def _text_parts(cls, v: Any) -> Any:
        return _unsupported_parts(v)

    def text(self) -> str:
        return parts_text(self.output)


class ReasoningItem(BaseModel):
    """A reasoning output item sent back: accepted and left out of the prompt."""

    model_config = ConfigDict(extra="allow")
    type: Literal["reasoning"]


def _item_type(v: Any) -> str:
    if isinstance(v, dict):
        return v.get("type", "message")
    return getattr(v, "type", "message")


InputItem = Annotated[
    Annotated[MessageItem, Tag("message")] | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")] | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_item_type),
]


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.\-]+$")
    description: str | None = None
    parameters: LimitedSchema = None
    strict: bool | None = None


class NamedFunction(BaseModel):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64)


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, max_length=64)
    description: str | None = None
    schema_: LimitedSchema = Field(default=None, alias="schema")
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_needed(self) -> TextFormat:
        if self.type == "json_schema" and self.schema_ is None:
            raise ValueError("a text format of type json_schema needs a schema")
        return self


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class ResponsesRequest(SamplingFields):
    """What a client sends; kronk's own sampling fields (top_k, min_p, seed, stop, ...) are accepted as on chat.
    ``store``, ``metadata``, ``user``, ``truncation`` and ``include`` are accepted (``truncation: "auto"`` drops
    nothing: a conversation that does not fit the context is a 400)."""

    # before input: its validator reads it (an empty input continues a stored response, or is a 400)
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=MAX_ID_LENGTH)
    input: list[InputItem]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: MaxTokens = None
    store: bool = True
    metadata: dict[str, str] | None = None
    reasoning: ReasoningConfig | None = None
    truncation: Literal["auto", "disabled"] | None = None
    user: str | None = Field(default=None, max_length=MAX_USER_LENGTH)
    background: bool | None = None
    n: int = Field(default=1, ge=1, le=1)

    # The limits the route validated under, for the chat request the replica builds (set by the route).
    _limits: Limits | None = PrivateAttr(default=None)

    @field_validator("input", mode="before")
    @classmethod
    def _input_items(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, str):
            return [{"type": "message", "role": "user", "content": v}]
        check_count(v, limits_of(info).max_messages, "input items", "max_messages")
        if v == [] and info.data.get("previous_response_id") is None:
            raise ValueError("input is empty; send a string or at least one item")
        if isinstance(v, list):
            for i, item in enumerate(v):
                kind = _item_type(item) if isinstance(item, dict) else None
                if kind is not None and kind not in ITEM_TYPES:
                    shown = repr(kind[:40]) if isinstance(kind, str) else "a non-string type"
                    raise ValueError(f"input[{i}] is a {shown} item; kronk takes {', '.join(ITEM_TYPES)} items")
        return v

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools_only(cls, v: Any, info: ValidationInfo) -> Any:
        check_count(v, limits_of(info).max_tools, "tools", "max_tools")
        for i, t in enumerate(v if isinstance(v, list) else ()):
            kind = t.get("type") if isinstance(t, dict) else None
            if isinstance(kind, str) and kind != "function":
                raise ValueError(f"tools[{i}] is a {kind[:40]!r} tool; kronk runs function tools only (type: "
                                 "\"function\", with name, description and parameters)")
        return v

    @field_validator("tools")
    @classmethod
    def _tool_schemas_together(cls, v: list[FunctionTool] | None, info: ValidationInfo) -> list[FunctionTool] | None:
        lim = limits_of(info)
        total = sum(schema_repeats(t.parameters, lim.max_schema_repeat) for t in v or ())
        check_repeat_total(total, lim, "the tools' parameter schemas'")
        return v

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _function_choice_only(cls, v: Any) -> Any:
        kind = v.get("type") if isinstance(v, dict) else None
        if isinstance(kind, str) and kind != "function":
            raise ValueError(f"tool_choice of type {kind[:40]!r} is not supported; send \"auto\", \"none\", "
                             "\"required\" or {\"type\": \"function\", \"name\": ...}")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata_bounds(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if len(v) > MAX_METADATA:
            raise ValueError(f"metadata has at most {MAX_METADATA} pairs, got {len(v)}")
        for k, val in v.items():
            if len(k) > MAX_METADATA_KEY:
                raise ValueError(f"a metadata key has at most {MAX_METADATA_KEY} characters, got {len(k)}")
            if len(val) > MAX_METADATA_VALUE:
                raise ValueError(f"a metadata value has at most {MAX_METADATA_VALUE} characters, got {len(val)}")
        return v

    @field_validator("background")
    @classmethod
    def _no_background(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("background responses are not supported; send background: false (or leave it out) "
                             "and stream the response instead")
        return v

    @model_validator(mode="after")
    def _checks(self) -> ResponsesRequest:
        extra = self.model_extra or {}
        for name in ("conversation", "prompt"):
            if extra.get(name) is not None:
                raise ValueError(f"{name} is not supported by this server; send the input (and "
                                 "previous_response_id to continue a stored response)")
        choice = self.tool_choice
        if isinstance(choice, NamedFunction) and choice.name not in {t.name for t in self.tools or []}:
            raise ValueError(f"tool_choice names function {choice.name!r}, which is not in tools")
        if self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice is 'required' but no tools were given")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_output_tokens or self.max_tokens

    @property
    def text_format(self) -> TextFormat | None:
        return self.text.format if self.text is not None else None

    def with_input(self, items: list[Any], limits: Limits) -> ResponsesRequest:
        """This request over the whole conversation (a stored one's items, then its own), for the replica."""
        req = self.model_copy(update={"input": items})
        req._limits = limits
        return req
