"""Data types shared by the tool-call and reasoning parsers."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

_ID_ALPHABET = string.ascii_letters + string.digits


def new_call_id() -> str:
    """An OpenAI-style tool call id: ``call_`` and 24 random letters and digits."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


class FunctionCall(BaseModel):
    """A function call: what a parser read from the model's output (``arguments`` is then always JSON text of an
    object), or what a client sends back in an assistant message (JSON text, or an object)."""

    model_config = ConfigDict(extra="allow")
    name: str
    arguments: str | dict[str, Any] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}


class ToolCall(BaseModel):
    """One tool call, in OpenAI's shape; the one definition for requests and parsed outputs."""

    model_config = ConfigDict(extra="allow")
    id: str | None = None  # parsers always set one (new_call_id); a client may leave it out
    type: Literal["function"] = "function"
    function: FunctionCall

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "function": self.function.to_dict()}


@dataclass(slots=True)
class ParsedOutput:
    """A whole model output split into the text the user sees and the tool calls it made.

    ``content`` is None when the output was only tool calls (and whitespace).
    ``cut_call``: the output ended inside a tool call (a token limit): the call is in
    ``tool_calls`` with the arguments read so far; answer ``finish_reason: "length"``.
    """

    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    reasoning_content: str | None = None
    cut_call: bool = False


@dataclass(slots=True)
class StreamEvent:
    """One streamed piece: exactly one of ``content``, ``reasoning`` or ``tool_call`` is set.

    ``tool_call`` has the OpenAI streaming shape: the first fragment of a call is
    ``{"index", "id", "type": "function", "function": {"name", "arguments": ""}}``,
    later ones ``{"index", "function": {"arguments": "<piece>"}}``.
    """

    content: str | None = None
    reasoning: str | None = None
    tool_call: dict[str, Any] | None = None

    @property
    def kind(self) -> str:
        if self.tool_call is not None:
            return "tool_call"
        return "reasoning" if self.reasoning is not None else "content"


def coalesce(events: list[StreamEvent]) -> list[StreamEvent]:
    """Merge neighbouring content pieces, reasoning pieces and argument fragments of one call."""
    out: list[StreamEvent] = []
    for ev in events:
        prev = out[-1] if out else None
        if prev is not None:
            if ev.content is not None and prev.content is not None:
                prev.content += ev.content
                continue
            if ev.reasoning is not None and prev.reasoning is not None:
                prev.reasoning += ev.reasoning
                continue
            tc, ptc = ev.tool_call, prev.tool_call
            if (
                tc is not None
                and ptc is not None
                and "id" not in tc
                and "id" not in ptc
                and tc["index"] == ptc["index"]
            ):
                ptc["function"]["arguments"] += tc["function"]["arguments"]
                continue
        out.append(ev)
    return out


def collect(events: list[StreamEvent]) -> ParsedOutput:
    """Assemble streamed events into the whole-text result they amount to."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, ToolCall] = {}
    for ev in events:
        if ev.content is not None:
            content.append(ev.content)
        elif ev.reasoning is not None:
            reasoning.append(ev.reasoning)
        elif ev.tool_call is not None:
            tc = ev.tool_call
            fn = tc.get("function", {})
            if "id" in tc:
                calls[tc["index"]] = ToolCall(function=FunctionCall(name=fn.get("name", "")), id=tc["id"])
            calls[tc["index"]].function.arguments += fn.get("arguments", "")
    tool_calls = [calls[i] for i in sorted(calls)]
    text = "".join(content)
    return ParsedOutput(
        content=None if tool_calls and not text.strip() else text,
        tool_calls=tool_calls,
        reasoning_content="".join(reasoning) or None,
    )
