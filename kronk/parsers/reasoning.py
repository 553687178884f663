"""Reasoning (``<think>...</think>``) split from the answer, whole or streamed.

Qwen3, QwQ and DeepSeek-R1 write their reasoning inside ``<think>`` tags before the
answer. R1's templates (and Qwen3's with thinking forced on) open the block in the
prompt, so the output starts inside the reasoning with no ``<think>``: pass
``starts_in_reasoning=True`` for those. The block is recognised only at the start
of the output. Whitespace just inside the tags and just after ``</think>`` is
dropped; everything else comes out as written. An output with no closing tag
(cut off by a token limit) is all reasoning.
"""

from __future__ import annotations

from kronk.parsers.types import StreamEvent, coalesce

_WS = " \t\r\n"

_START, _REASONING, _CONTENT = range(3)


def _partial_suffix(buf: str, tag: str) -> int:
    """Length of the longest end of ``buf`` that is a proper prefix of ``tag``."""
    for k in range(min(len(tag) - 1, len(buf)), 0, -1):
        if buf.endswith(tag[:k]):
            return k
    return 0


class ReasoningParser:
    """Splits reasoning from content. ``parse`` is stateless; ``feed``/``finish`` stream
    one output (use a fresh parser, or :meth:`stream`, per output)."""

    def __init__(
        self,
        starts_in_reasoning: bool = False,
        start_tag: str = "<think>",
        end_tag: str = "</think>",
    ) -> None:
        self.starts_in_reasoning = starts_in_reasoning
        self.start_tag = start_tag
        self.end_tag = end_tag
        self._buf = ""
        self._mode = _START
        self._strip = True  # drop whitespace at the start of the current part
        self._closed = False
        self._events: list[StreamEvent] = []

    def stream(self) -> ReasoningParser:
        """A fresh parser with the same settings, for streaming one output."""
        return ReasoningParser(self.starts_in_reasoning, self.start_tag, self.end_tag)

    def parse(self, text: str) -> tuple[str | None, str]:
        """(reasoning_content or None, content) of a whole output."""
        state = self.stream()
        events = state.feed(text) + state.finish()
        reasoning = "".join(e.reasoning for e in events if e.reasoning is not None)
        content = "".join(e.content for e in events if e.content is not None)
        return reasoning or None, content

    def feed(self, delta: str) -> list[StreamEvent]:
        if self._closed:
            raise RuntimeError("feed() after finish()")
        self._buf += delta
        self._run(final=False)
        return self._take()

    def finish(self) -> list[StreamEvent]:
        if not self._closed:
            self._closed = True
            self._run(final=True)
        return self._take()

    def _take(self) -> list[StreamEvent]:
        events, self._events = coalesce(self._events), []
        return events

    def _emit(self, text: str, reasoning: bool) -> None:
        if text:
            self._events.append(StreamEvent(reasoning=text) if reasoning else StreamEvent(content=text))

    def _run(self, final: bool) -> None:
        while True:
            if self._mode == _START:
                if not self._start(final):
                    return
            elif self._mode == _REASONING:
                if not self._reasoning(final):
                    return
            else:
                self._content()
                return

    def _start(self, final: bool) -> bool:
        """Is there a start tag? Returns True when the mode was decided."""
        buf = self._buf
        body = buf.lstrip(_WS)
        if body.startswith(self.start_tag):
            self._buf = body[len(self.start_tag) :]
            self._mode, self._strip = _REASONING, True
            return True
        if not final and self.start_tag.startswith(body):
            return False  # only whitespace or a piece of the tag so far
        if self.starts_in_reasoning:
            self._mode, self._strip = _REASONING, True
        else:
            self._mode, self._strip = _CONTENT, False
        return True

    def _reasoning(self, final: bool) -> bool:
        """Reasoning up to the end tag. Returns True when the end tag was passed."""
        buf = self._buf
        if self._strip:
            buf = buf.lstrip(_WS)
            if buf:
                self._strip = False
        i = buf.find(self.end_tag)
        if i >= 0:
            self._emit(buf[:i].rstrip(_WS), reasoning=True)
            self._buf = buf[i + len(self.end_tag) :]
            self._mode, self._strip = _CONTENT, True
            return True
        if final:
            self._emit(buf.rstrip(_WS), reasoning=True)
            self._buf = ""
            return False
        keep = len(buf) - _partial_suffix(buf, self.end_tag)
        text = buf[:keep].rstrip(_WS)
        self._emit(text, reasoning=True)
        self._buf = buf[len(text) :]
        return False

    def _content(self) -> None:
        buf = self._buf
        if self._strip:
            buf = buf.lstrip(_WS)
            if buf:
                self._strip = False
        self._emit(buf, reasoning=False)
        self._buf = ""
