"""Ollama's request bodies, and how they map onto kronk's requests.

A body is validated twice, both times at the route: first as Ollama writes it (the models below, so that a bad
field is named as the client sent it: ``options.temperature``, ``format``), then, mapped by :func:`turn_body`
/ :func:`raw_body`, as the chat or completion request the replica runs (:class:`OllamaTurn`,
:class:`OllamaRaw`: kronk's own requests with the few Ollama facts the answer needs), with every limit those
requests have. The sampling fields use the shared types of kronk/api/schemas.py, so the limits agree with the
OpenAI routes'.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from kronk.api.chat.schemas import ChatCompletionRequest
from kronk.api.completions.schemas import CompletionRequest
from kronk.api.embeddings.schemas import EmbeddingRequest
from kronk.api.limits import check_count, check_model_name, limits_of
from kronk.api.schemas import (
    INT32_MAX,
    INT64_MAX,
    MinP,
    Penalty,
    RepeatPenalty,
    Seed,
    Stop,
    Temperature,
    TopK,
    TopP,
)
from kronk.serving.pool import parse_duration

# Options kronk maps onto its sampling fields; every other option Ollama knows (num_ctx, num_keep, typical_p,
# tfs_z, mirostat*, penalize_newline, numa, num_batch, num_gpu, main_gpu, low_vram, f16_kv, logits_all,
# vocab_only, use_mmap, use_mlock, embedding_only, num_thread, ...) is accepted and ignored: the context,
# threads and memory are the server's settings.
SAMPLING_OPTIONS = ("temperature", "top_k", "top_p", "min_p", "seed", "stop", "repeat_penalty", "repeat_last_n",
                    "presence_penalty", "frequency_penalty")
THINK_LEVELS = ("low", "medium", "high")


class Options(BaseModel):
    """``options``: what the engine has is mapped; the rest is accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    num_predict: int | None = Field(default=None, ge=-2, le=INT64_MAX,
                                    description="Tokens to generate at most; -1 or -2: until the context is full.")
    num_ctx: int | None = Field(default=None, ge=0, le=INT64_MAX,
                                description="Accepted and ignored: the context size is the server's setting.")
    temperature: Temperature = None
    top_k: TopK = None
    top_p: TopP = None
    min_p: MinP = None
    seed: Seed = None
    stop: Stop = None
    repeat_penalty: RepeatPenalty = None
    repeat_last_n: int | None = Field(default=None, ge=-1, le=INT32_MAX)
    presence_penalty: Penalty = None
    frequency_penalty: Penalty = None

    def sampling(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in SAMPLING_OPTIONS if getattr(self, k) is not None}
        if self.num_predict is not None and self.num_predict > 0:  # Ollama: -1 infinite, -2 fill the context
            out["max_tokens"] = self.num_predict
        return out


class OllamaBody(BaseModel):
    """What every Ollama model request has: ``model`` (or the legacy ``name``) and ``keep_alive``."""

    model_config = ConfigDict(extra="allow")
    model: str | None = Field(default=None, description="The model, e.g. smollm2:135m (\"x\" is \"x:latest\").")
    name: str | None = Field(default=None, description="The legacy spelling of model.")
    keep_alive: float | str | None = Field(default=None, description="How long the model stays loaded after this "
                                           "request: seconds or a duration (\"5m\"); 0 unloads it, -1 keeps it.")

    @model_validator(mode="after")
    def _model_named(self, info: ValidationInfo) -> OllamaBody:
        self.model = self.model or self.name
        if not self.model:
            raise ValueError("model is required")
        check_model_name(self.model, limits_of(info))
        return self

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive(cls, v: float | str | None) -> float | str | None:
        if v is not None:
            parse_duration(v)  # kronk's request parses it again; this names the field as Ollama does
        return v

    @property
    def model_name(self) -> str:
        assert self.model is not None
        return self.model


class GenerationBody(OllamaBody):
    stream: bool = Field(default=True, description="NDJSON stream (Ollama's default) or one JSON object.")
    options: Options | None = None
    format: Literal["", "json"] | dict[str, Any] | None = Field(
        default=None, description="\"json\", or a JSON schema the answer follows.")
    think: bool | Literal["low", "medium", "high"] | None = Field(
        default=None, description="Reasoning on or off, or its effort; the reasoning comes back as thinking.")

    @field_validator("format", mode="before")
    @classmethod
    def _format(cls, v: Any) -> Any:
        if isinstance(v, str) and v not in ("", "json"):
            raise ValueError('format is "json" or a JSON schema (an object)')
        return v

    def shared(self) -> dict[str, Any]:
        """The mapped fields a chat and a raw completion share: sampling, token limit, format, stream."""
        options = self.options or Options()
        out: dict[str, Any] = {"model": self.model_name, "stream": self.stream, **options.sampling()}
        if self.keep_alive is not None:
            out["keep_alive"] = self.keep_alive
        if self.format == "json":
            out["response_format"] = {"type": "json_object"}
        elif isinstance(self.format, dict):
            out["response_format"] = {"type": "json_schema", "json_schema": {"name": "response",
                                                                             "schema": self.format}}
        return out

    def thinking(self) -> dict[str, Any]:
        """``think`` as the chat template reads it: enable_thinking, and reasoning_effort for a level."""
        if self.think is None:
            return {}
        if isinstance(self.think, str):
            return {"enable_thinking": True, "reasoning_effort": self.think}
        return {"enable_thinking": self.think}

    @property
    def wants_thinking(self) -> bool:
        return self.think is not None and self.think is not False


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class OllamaToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    function: ToolCallFunction


class OllamaMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | None = None
    images: list[str] | None = None
    thinking: str | None = None
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = None


class ChatBody(GenerationBody):
    """``POST /api/chat``."""

    messages: list[OllamaMessage] | None = Field(default=None, description="The conversation; none: load the "
                                                 "model (keep_alive 0: unload it).")
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = Field(default=None, description="kronk's extension (Ollama has none): \"auto\", "
                             "\"required\", \"none\" or a named function, as in /v1/chat/completions.")

    @field_validator("messages", mode="before")
    @classmethod
    def _messages_count(cls, v: Any, info: ValidationInfo) -> Any:
        check_count(v, limits_of(info).max_messages, "messages", "max_messages")
        return v


class GenerateBody(GenerationBody):
    """``POST /api/generate``."""

    prompt: str | None = Field(default=None, description="The prompt; empty: load the model (keep_alive 0: "
                               "unload it).")
    system: str | None = None
    raw: bool | None = Field(default=None, description="Send the prompt as it is (no chat template).")
    images: list[str] | None = None
    suffix: str | None = Field(default=None, description="Not supported (fill-in-the-middle): a 400.")
    template: str | None = Field(default=None, description="Not supported (a Go template): a 400; the model's "
                                 "own chat template is used.")
    context: list[int] | None = Field(default=None, description="Not supported (the deprecated token history): "
                                      "a 400; send the conversation to /api/chat.")

    @model_validator(mode="after")
    def _unsupported(self) -> GenerateBody:
        if self.suffix:
            raise ValueError("suffix (fill-in-the-middle) is not supported by this server")
        if self.template:
            raise ValueError("template is not supported by this server: the model's own chat template is used "
                             "(send raw: true with a prompt you formatted yourself)")
        if self.context:
            raise ValueError("context (the deprecated token history) is not supported by this server: send the "
                             "conversation as messages to /api/chat")
        return self

    @property
    def empty(self) -> bool:
        return not self.prompt and not self.images


class EmbedBody(OllamaBody):
    """``POST /api/embed``."""

    input: str | list[str] = Field(description="A text or a list of texts.")
    truncate: bool = Field(default=True, description="Cut inputs longer than the model's context (else a 400).")
    dimensions: int | None = Field(default=None, ge=1, le=INT32_MAX)
    options: dict[str, Any] | None = None


class EmbeddingsBody(OllamaBody):
    """``POST /api/embeddings`` (legacy): one prompt, one vector."""

    prompt: str = ""
    options: dict[str, Any] | None = None


class ModelBody(BaseModel):
    """``/api/show``, ``/api/delete``, ``/api/pull``: a model (or the legacy name)."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    name: str | None = None
    stream: bool = True
    verbose: bool = False

    @model_validator(mode="after")
    def _model_named(self, info: ValidationInfo) -> ModelBody:
        self.model = self.model or self.name
        if not self.model:
            raise ValueError("model is required")
        check_model_name(self.model, limits_of(info))
        return self


class CopyBody(BaseModel):
    """``/api/copy``."""

    model_config = ConfigDict(extra="allow")
    source: str = Field(min_length=1)
    destination: str = Field(min_length=1)

    @field_validator("source", "destination")
    @classmethod
    def _names(cls, v: str, info: ValidationInfo) -> str:
        check_model_name(v, limits_of(info))
        return v


# ---------------------------------------------------------------------------------- what the replica runs
class OllamaFacts(BaseModel):
    """What an Ollama answer needs beside kronk's request: the model as the client named it, the answer's shape,
    whether thinking was asked for."""

    name: str
    shape: Literal["chat", "generate"] = "chat"
    think: bool = False


class OllamaTurn(ChatCompletionRequest):
    """``/api/chat``, and ``/api/generate`` without ``raw``: one chat turn."""

    ollama: OllamaFacts


class OllamaRaw(CompletionRequest):
    """``/api/generate`` with ``raw: true``: the prompt as it is, special-token markup read as tokens."""

    ollama: OllamaFacts


class OllamaEmbed(EmbeddingRequest):
    """``/api/embed`` and ``/api/embeddings``."""

    ollama: OllamaFacts
    truncate: bool = True
    legacy: bool = False  # /api/embeddings: {"embedding": [...]}


# Where a field of the mapped request came from, for a 400 that names the field the client sent.
MAPPED_FROM = {"max_tokens": "options.num_predict", "response_format": "format",
               **{k: f"options.{k}" for k in SAMPLING_OPTIONS}}


def _tool_calls(calls: list[OllamaToolCall], n: int) -> list[dict[str, Any]]:
    return [{"id": f"call_{n}_{i}", "type": "function",
             "function": {"name": c.function.name, "arguments": c.function.arguments}} for i, c in enumerate(calls)]


def _parts(text: str, images: list[str]) -> list[dict[str, Any]]:
    """Text with images, as OpenAI content parts (a text-only model refuses the images: a 400)."""
    return [{"type": "text", "text": text},
            *({"type": "image_url", "image_url": {"url": f"data:image/*;base64,{img}"}} for img in images)]


def chat_messages(messages: list[OllamaMessage]) -> list[dict[str, Any]]:
    """Ollama's messages as OpenAI's: tool calls get ids (Ollama's have none), and a tool's answer is tied to
    the call it answers by ``tool_name`` (else to the next call not yet answered)."""
    out: list[dict[str, Any]] = []
    open_calls: list[dict[str, Any]] = []
    for n, m in enumerate(messages):
        d: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.images:
            d["content"] = _parts(m.content or "", m.images)
        if m.thinking and m.role == "assistant":
            d["reasoning_content"] = m.thinking
        if m.tool_calls:
            d["tool_calls"] = _tool_calls(m.tool_calls, n)
            open_calls = list(d["tool_calls"])
        if m.role == "tool":
            d["content"] = m.content or ""
            hit = next((c for c in open_calls if c["function"]["name"] == m.tool_name), None) or \
                (open_calls[0] if open_calls else None)
            if hit is not None:
                open_calls.remove(hit)
                d["tool_call_id"] = hit["id"]
            if m.tool_name:
                d["name"] = m.tool_name
        elif m.role == "assistant" and m.content is None and not m.tool_calls:
            d["content"] = ""
        out.append(d)
    return out


def turn_body(body: ChatBody | GenerateBody, model: str) -> dict[str, Any]:
    """The chat request a chat (or a templated generate) runs as."""
    out = {**body.shared(), **body.thinking(), "model": model}
    if isinstance(body, ChatBody):
        out["messages"] = chat_messages(body.messages or [])
        if body.tools:
            out["tools"] = body.tools
        if body.tool_choice is not None:
            out["tool_choice"] = body.tool_choice
        shape = "chat"
    else:  # Ollama applies the template to one user message (and the system prompt)
        prompt = body.prompt or ""
        out["messages"] = ([{"role": "system", "content": body.system}] if body.system else []) + \
            [{"role": "user", "content": _parts(prompt, body.images) if body.images else prompt}]
        shape = "generate"
    out["ollama"] = {"name": body.model_name, "shape": shape, "think": body.wants_thinking}
    return out


def raw_body(body: GenerateBody, model: str) -> dict[str, Any]:
    """The completion a ``raw: true`` generate runs as (``system`` is not used: nothing is templated)."""
    return {**body.shared(), "model": model, "prompt": body.prompt or "",
            "ollama": {"name": body.model_name, "shape": "generate", "think": body.wants_thinking}}
