"""Reasoning and tool calls together: what the API layer runs over a model's output."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kronk.parsers.base import StreamState, ToolParser
from kronk.parsers.families import get_tool_parser
from kronk.parsers.reasoning import ReasoningParser
from kronk.parsers.types import ParsedOutput, StreamEvent, coalesce


class OutputStream:
    """Streams one output: reasoning first (if any), then content and tool calls.

    ``cut_call`` (read it after :meth:`finish`): the output ended inside a tool call.
    """

    def __init__(self, tools: StreamState | None, reasoning: ReasoningParser | None) -> None:
        self._tools = tools
        self._reasoning = reasoning

    @property
    def cut_call(self) -> bool:
        return bool(getattr(self._tools, "cut_call", False))

    def _route(self, events: list[StreamEvent], final: bool) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for ev in events:
            if ev.content is not None and self._tools is not None:
                out.extend(self._tools.feed(ev.content))
            else:
                out.append(ev)
        if final and self._tools is not None:
            out.extend(self._tools.finish())
        return coalesce(out)

    def feed(self, delta: str) -> list[StreamEvent]:
        events = self._reasoning.feed(delta) if self._reasoning else [StreamEvent(content=delta)]
        return self._route(events, final=False)

    def finish(self) -> list[StreamEvent]:
        events = self._reasoning.finish() if self._reasoning else []
        return self._route(events, final=True)


class OutputParser:
    """A tool parser and/or a reasoning parser, applied in that order of the text.

    A tool parser whose format carries its own reasoning (``harmony``) replaces the
    ``<think>`` parser: its analysis channel is the reasoning.
    """

    def __init__(self, tools: ToolParser | None = None, reasoning: ReasoningParser | None = None) -> None:
        self.tools = tools
        self.reasoning = None if tools is not None and tools.handles_reasoning else reasoning

    def stream(self) -> OutputStream:
        return OutputStream(
            self.tools.stream() if self.tools else None,
            self.reasoning.stream() if self.reasoning else None,
        )

    def parse(self, text: str) -> ParsedOutput:
        reasoning, content = self.reasoning.parse(text) if self.reasoning else (None, text)
        out = self.tools.parse(content) if self.tools else ParsedOutput(content=content)
        if reasoning is not None or out.reasoning_content is None:
            out.reasoning_content = reasoning
        return out


def output_parser(
    family: str,
    tools: Iterable[dict[str, Any]] | None = None,
    *,
    reasoning: bool = False,
    starts_in_reasoning: bool = False,
    parallel_tool_calls: bool | None = None,
) -> OutputParser:
    """The parser for one request's output.

    ``family``: the model's tool parser (``ModelService.tool_parser``, or the one the
    request must use); ``tools``: the request's OpenAI tool dicts when tools are in use
    (None or empty: no tool calls are read, except that ``harmony`` output is always
    split into its channels); ``reasoning``: the model writes ``<think>`` blocks;
    ``parallel_tool_calls=False``: only the first call is reported.
    """
    tool_list = list(tools or [])
    max_calls = 1 if parallel_tool_calls is False else None
    parser: ToolParser | None = None
    if tool_list:
        parser = get_tool_parser(family, tools=tool_list, max_calls=max_calls)
    elif family.strip().lower() == "harmony":
        parser = get_tool_parser("harmony", tools=[], max_calls=max_calls)
    think = ReasoningParser(starts_in_reasoning=starts_in_reasoning) if reasoning else None
    return OutputParser(tools=parser, reasoning=think)
