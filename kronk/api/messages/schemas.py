"""``POST /v1/messages`` and ``/v1/messages/count_tokens`` requests, and their mapping onto a chat request.

A request is validated once, at the route, with the server's limits; its validation also builds the
:class:`~kronk.api.chat.schemas.ChatCompletionRequest` that the replica runs as one chat turn (``.chat``):
``system`` becomes the first (system) message, a ``tool_result`` block a ``tool`` message, a ``tool_use`` block an
assistant ``tool_calls`` entry, ``tools`` OpenAI function tools, ``tool_choice`` OpenAI's ``auto`` / ``required`` /
a named function / ``none`` (``disable_parallel_tool_use`` as ``parallel_tool_calls``), ``thinking``
``chat_template_kwargs.enable_thinking``, ``output_config.format`` ``response_format``, ``output_config.effort``
``reasoning_effort``, ``stop_sequences`` ``stop``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from kronk.api.chat.schemas import ChatCompletionRequest
from kronk.api.limits import check_count, check_stop, limits_of
from kronk.api.schemas import INT64_MAX, LimitedSchema, ModelRequest, Temperature, TopK, TopP
from kronk.errors import InvalidRequest, Unsupported


class TextBlock(BaseModel):
    model_config = ConfigDict(extra="allow")  # cache_control, citations: accepted
    type: Literal["text"]
    text: str


class MediaBlock(BaseModel):
    """Content the models served here cannot read (they read text): refused with a 400 that says so."""

    model_config = ConfigDict(extra="allow")
    type: Literal["image", "document", "search_result", "container_upload"]


class ToolUseBlock(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


ResultPart = Annotated[TextBlock | MediaBlock, Field(discriminator="type")]


class ToolResultBlock(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[ResultPart] | None = None
    is_error: bool | None = None


class ThinkingBlock(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["redacted_thinking"]
    data: str = ""


ContentBlock = Annotated[TextBlock | MediaBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock
                         | RedactedThinkingBlock, Field(discriminator="type")]


BLOCK_TYPES = ("text", "image", "document", "search_result", "container_upload", "tool_use", "tool_result",
               "thinking", "redacted_thinking")


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["user", "assistant"]
    content: str | list[ContentBlock]

    @field_validator("content", mode="before")
    @classmethod
    def _block_types(cls, v: Any) -> Any:
        for j, b in enumerate(v if isinstance(v, list) else ()):
            kind = b.get("type") if isinstance(b, dict) else None
            if kind not in BLOCK_TYPES:
                shown = f"type {kind!r}" if isinstance(kind, str) else "no type"
                raise ValueError(f"content block {j} has {shown[:80]}; a block is one of {', '.join(BLOCK_TYPES)}")
        return v


class ToolDef(BaseModel):
    """A client tool: name, description, the JSON Schema of its input. Anthropic's server tools (web search, code
    execution, ...) are not run here."""

    model_config = ConfigDict(extra="allow")  # cache_control: accepted
    type: str | None = None
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_.\-]+$")
    description: str | None = None
    input_schema: LimitedSchema = None

    @model_validator(mode="after")
    def _client_tool(self) -> ToolDef:
        if self.type not in (None, "custom"):
            raise ValueError(f"tool type {self.type!r} (an Anthropic server tool) is not supported here; define a "
                             "client tool with name, description and input_schema")
        if self.input_schema is None:
            raise ValueError("a tool needs an input_schema (a JSON Schema object)")
        return self


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Thinking(BaseModel):
    """``enabled`` / ``disabled``: the template's ``enable_thinking``; ``adaptive`` (and ``between_tools``): the
    template's default. ``budget_tokens`` is accepted; the answer's ``max_tokens`` bounds thinking too."""

    model_config = ConfigDict(extra="allow")
    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: int | None = Field(default=None, ge=1, le=INT64_MAX)


class OutputFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["json_schema"]
    schema_: LimitedSchema = Field(alias="schema")

    @model_validator(mode="after")
    def _schema_needed(self) -> OutputFormat:
        if self.schema_ is None:
            raise ValueError("an output format of type json_schema needs a schema")
        return self


class OutputConfig(BaseModel):
    """Structured output (``format``: a JSON Schema the answer follows, enforced by a grammar) and ``effort``
    (the template's ``reasoning_effort``)."""

    model_config = ConfigDict(extra="allow")
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: OutputFormat | None = None


def _block_name(role: str, block: BaseModel) -> str:
    return f"a {block.type} block in a {role} message"  # type: ignore[attr-defined]


def _text_only(block: BaseModel, where: str) -> None:
    if isinstance(block, MediaBlock):
        raise Unsupported(f"{block.type} content is not supported: the models kronk serves read text only "
                          f"({where})", param=where)


def _tool_result_text(block: ToolResultBlock, where: str) -> str:
    if isinstance(block.content, list):
        for k, part in enumerate(block.content):
            _text_only(part, f"{where}.content.{k}")
        text = "".join(p.text for p in block.content if isinstance(p, TextBlock))
    else:
        text = block.content or ""
    return f"Error: {text}" if block.is_error else text


def chat_messages(system: str | list[TextBlock] | None, messages: list[Message]) -> list[dict[str, Any]]:
    """The conversation as chat messages (dicts ChatCompletionRequest validates); media blocks are a 400."""
    out: list[dict[str, Any]] = []
    if system is not None:
        text = system if isinstance(system, str) else "".join(b.text for b in system)
        out.append({"role": "system", "content": text})
    names: dict[str, str] = {}  # tool_use id -> tool name (a template may show a result's tool)
    for i, m in enumerate(messages):
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
            continue
        if m.role == "assistant":
            text, calls, thinking = [], [], []
            for j, b in enumerate(m.content):
                where = f"messages.{i}.content.{j}"
                _text_only(b, where)
                if isinstance(b, TextBlock):
                    text.append(b.text)
                elif isinstance(b, ToolUseBlock):
                    names[b.id] = b.name
                    calls.append({"id": b.id, "type": "function", "function": {"name": b.name, "arguments": b.input}})
                elif isinstance(b, ThinkingBlock):
                    thinking.append(b.thinking)
                elif isinstance(b, ToolResultBlock):
                    raise InvalidRequest(f"{where}: {_block_name(m.role, b)}; tool results go in user messages",
                                         param=where)
            msg: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None}
            if calls:
                msg["tool_calls"] = calls
            if thinking:
                msg["reasoning_content"] = "".join(thinking)
            out.append(msg)
            continue
        parts: list[str] = []
        for j, b in enumerate(m.content):
            where = f"messages.{i}.content.{j}"
            _text_only(b, where)
            if isinstance(b, TextBlock):
                parts.append(b.text)
            elif isinstance(b, ToolResultBlock):
                if parts:  # text before a result stays before it
                    out.append({"role": "user", "content": "".join(parts)})
                    parts = []
                tool: dict[str, Any] = {"role": "tool", "tool_call_id": b.tool_use_id,
                                        "content": _tool_result_text(b, where)}
                if b.tool_use_id in names:
                    tool["name"] = names[b.tool_use_id]
                out.append(tool)
            else:
                raise InvalidRequest(f"{where}: {_block_name(m.role, b)}; it belongs in an assistant message",
                                     param=where)
        if parts or not any(isinstance(b, ToolResultBlock) for b in m.content):
            out.append({"role": "user", "content": "".join(parts)})
    return out


def _chat_request(fields: dict[str, Any], info: ValidationInfo) -> ChatCompletionRequest:
    """The chat request, validated with the same limits as this request; a problem is a 400 (this request's own
    checks run first, so one here is rare)."""
    try:
        return ChatCompletionRequest.model_validate(fields, context=info.context)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise InvalidRequest(f"{loc}: {msg}" if loc else msg, param=loc or None) from None


class Conversation(ModelRequest):
    """What both endpoints read: the conversation, the tools and how they may be used, thinking."""

    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    output_format: OutputFormat | None = None  # the structured-outputs beta's name for output_config.format
    _chat: ChatCompletionRequest | None = PrivateAttr(default=None)

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

    @model_validator(mode="after")
    def _tool_choice(self) -> Conversation:
        choice = self.tool_choice
        names = [t.name for t in self.tools or []]
        if choice is not None and choice.type in ("any", "tool") and not names:
            raise ValueError(f"tool_choice is {choice.type!r} but no tools were given")
        if choice is not None and choice.type == "tool" and choice.name not in names:
            raise ValueError(f"tool_choice names tool {choice.name!r}, which is not in tools")
        if choice is not None and choice.type in ("any", "tool") and self.thinking and self.thinking.type == "enabled":
            raise ValueError("thinking may not be enabled when tool_choice forces tool use (type any or tool)")
        return self

    def chat_fields(self) -> dict[str, Any]:
        """The chat request's fields for this conversation."""
        fields: dict[str, Any] = {"model": self.model, "messages": chat_messages(self.system, self.messages)}
        last = fields["messages"][-1]
        if last["role"] == "assistant" and last.get("content") and not last.get("tool_calls"):
            fields["continue_final_message"] = True  # Anthropic's prefill: the model goes on from it
        if self.keep_alive is not None:
            fields["keep_alive"] = self.keep_alive
        if self.tools:
            fields["tools"] = [{"type": "function", "function": {
                "name": t.name, **({"description": t.description} if t.description is not None else {}),
                "parameters": t.input_schema}} for t in self.tools]
        choice = self.tool_choice
        if choice is not None:
            fields["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(
                choice.type, {"type": "function", "function": {"name": choice.name}})
            if choice.disable_parallel_tool_use is not None:
                fields["parallel_tool_calls"] = not choice.disable_parallel_tool_use
        if self.thinking is not None and self.thinking.type in ("enabled", "disabled"):
            fields["chat_template_kwargs"] = {"enable_thinking": self.thinking.type == "enabled"}
        config = self.output_config
        fmt = config.format if config is not None and config.format is not None else self.output_format
        if fmt is not None:
            fields["response_format"] = {"type": "json_schema", "json_schema": {"name": "output",
                                                                               "schema": fmt.schema_}}
        if config is not None and config.effort is not None:
            fields["reasoning_effort"] = config.effort
        return fields

    @property
    def chat(self) -> ChatCompletionRequest:
        """The chat request this one runs as (built when validated)."""
        assert self._chat is not None, "validate the request with model_validate"
        return self._chat


class MessagesRequest(Conversation):
    """``POST /v1/messages``: ``max_tokens`` is required, as Anthropic requires it."""

    max_tokens: int = Field(ge=1, le=INT64_MAX)
    stop_sequences: list[str] | None = None
    temperature: Temperature = None
    top_p: TopP = None
    top_k: TopK = None
    metadata: dict[str, Any] | None = None  # user_id: accepted
    stream: bool = False

    @field_validator("stop_sequences", mode="before")
    @classmethod
    def _stop_limits(cls, v: Any, info: ValidationInfo) -> Any:
        check_stop(v, limits_of(info))
        return v

    @model_validator(mode="after")
    def _as_chat(self, info: ValidationInfo) -> MessagesRequest:
        fields = self.chat_fields()
        fields.update(max_tokens=self.max_tokens, stream=self.stream)
        for name in ("temperature", "top_p", "top_k"):
            if getattr(self, name) is not None:
                fields[name] = getattr(self, name)
        if self.stop_sequences:
            fields["stop"] = list(self.stop_sequences)
        self._chat = _chat_request(fields, info)
        return self


class CountTokensRequest(Conversation):
    """``POST /v1/messages/count_tokens``: the prompt tokens the same conversation would prefill."""

    @model_validator(mode="after")
    def _as_chat(self, info: ValidationInfo) -> CountTokensRequest:
        self._chat = _chat_request(self.chat_fields(), info)
        return self
