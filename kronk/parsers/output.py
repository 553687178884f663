"""Reasoning and tool calls together: what the API layer runs over a model's output."""

from __future__ import annotations

from kronk.parsers.base import StreamState, ToolParser
from kronk.parsers.reasoning import ReasoningParser
from kronk.parsers.types import ParsedOutput, StreamEvent, coalesce


class OutputStream:
    """Streams one output: reasoning first (if any), then content and tool calls."""

    def __init__(self, tools: StreamState | None, reasoning: ReasoningParser | None) -> None:
        self._tools = tools
        self._reasoning = reasoning

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
    """A tool parser and/or a reasoning parser, applied in that order of the text."""

    def __init__(self, tools: ToolParser | None = None, reasoning: ReasoningParser | None = None) -> None:
        self.tools = tools
        self.reasoning = reasoning

    def stream(self) -> OutputStream:
        return OutputStream(
            self.tools.stream() if self.tools else None,
            self.reasoning.stream() if self.reasoning else None,
        )

    def parse(self, text: str) -> ParsedOutput:
        reasoning, content = self.reasoning.parse(text) if self.reasoning else (None, text)
        out = self.tools.parse(content) if self.tools else ParsedOutput(content=content)
        out.reasoning_content = reasoning
        return out
