"""The machinery under every tool-call parser: one incremental scanner for both modes.

A family is a set of *openers* (markers such as ``<tool_call>``, or ``{`` for
bare JSON) and, for each, a *body*: a generator that reads the call from a
:class:`Cursor`, yields ``NEED`` when it has to see more text (or ``COMMIT``
when a call's name and the start of its arguments are known) and returns the
calls it read (``None``: a complete value that is not a call). Text between
calls is content. Text that may still turn out to be a marker is held back.

Whole-text :meth:`ToolParser.parse` and :meth:`ToolParser.stream` run the same
scanner, so a stream's pieces add up to the whole-text result however the text
is split. A stream *commits* a call (sends its name, then its arguments as they
come) once its name and the opening ``{`` of its arguments have been read. If
the text breaks after that point, the committed calls stand and the text from
the break on is content, in both modes; except that when a committed call's
arguments are malformed, whole-text parsing gives the whole candidate back as
content, which a stream cannot do.

An output that ends inside a call (cut off by a token limit) is not a break: the
open calls whose names are known are reported with the arguments read so far,
the markup is never content, and ``cut_call`` says so.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from kronk.parsers.coerce import Coercer
from kronk.parsers.jsonscan import COMMIT, WS
from kronk.parsers.reader import Calls, Cursor, Fail, Gen, is_object
from kronk.parsers.types import ParsedOutput, StreamEvent, coalesce, collect, new_call_id

Body = Callable[[Cursor], Gen["Calls | None"]]


@dataclass(frozen=True, slots=True)
class Opener:
    marker: str
    body: Body
    leading: bool = False  # only at the start of the output or right after a call
    consume: bool = True  # the body starts after the marker (else at it, e.g. "{")
    eager: bool = True  # stream arguments while they are written
    sure: bool = True  # the marker alone says a call follows (a cut after it is a cut call)


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    openers: tuple[Opener, ...]
    separators: str = ""  # skipped after a call, besides whitespace (";" for Llama 3)
    allowed_names: frozenset[str] | None = None  # checked for bare-JSON calls
    coercer: Coercer | None = None  # the tools' schemas: arguments are coerced to them
    max_calls: int | None = None  # report this many calls at most; drop what follows
    driver: Callable[[Family, bool], Any] | None = None  # a whole-output format (harmony)


@dataclass(slots=True)
class _Candidate:
    gen: Generator[str, None, Any]
    cur: Cursor
    opener_len: int
    mark: int  # len(events) when it began (whole-text mode takes them back on a revert)
    sure: bool


@dataclass(slots=True)
class _Sent:
    id: str
    pos: int  # buffer position the arguments were sent up to
    pieces: list[str]

    def text(self) -> str:
        return "".join(self.pieces)


class StreamState:
    """Incremental tool-call parsing of one output: ``feed`` pieces, then ``finish``.

    ``whole=True`` is the whole-text mode behind :meth:`ToolParser.parse`: ``feed``
    only gathers text and ``finish`` returns every event.
    """

    def __init__(self, family: Family, whole: bool = False) -> None:
        self.family = family
        self.whole = whole
        self._buf = ""
        self._final = False
        self._closed = False
        self._events: list[StreamEvent] = []
        self._at_boundary = True
        self._after_call = False
        self._pending_ws = ""
        self._cand: _Candidate | None = None
        self._n_calls = 0
        self._open: list[_Sent] = []  # the candidate's calls sent so far
        self._skip = WS + family.separators
        self._dropping = False  # max_calls reached: the rest of the output is dropped
        self.cut_call = False  # the output ended inside a call (set by finish)
        self._markers = tuple(o.marker for o in family.openers if not o.leading)
        self._leading = tuple(o for o in family.openers if o.leading)

    def feed(self, text: str) -> list[StreamEvent]:
        if self._closed:
            raise RuntimeError("feed() after finish()")
        if self._dropping:
            return []
        buf, self._buf = self._buf, ""
        if self._cand is not None:
            self._cand.cur.buf = ""  # one reference left: CPython can grow the string in place
        buf += text
        self._buf = buf
        if self.whole:
            return []
        self._run()
        return self._take()

    def finish(self) -> list[StreamEvent]:
        if not self._closed:
            self._final = self._closed = True
            self._run()
        return self._take()

    def _take(self) -> list[StreamEvent]:
        events, self._events = coalesce(self._events), []
        return events

    def _run(self) -> None:
        while True:
            if self._dropping:
                self._buf, self._pending_ws = "", ""
                return
            if self._cand is None:
                if not self._content_step():
                    return
            elif not self._candidate_step():
                if self._final and self._cand is not None:  # a body that wants more at the end
                    self._fail(len(self._buf))
                    continue
                return

    def _content(self, text: str) -> None:
        self._events.append(StreamEvent(content=text))
        self._at_boundary = False

    def _locate(self, buf: str) -> tuple[int, Opener] | None:
        best: tuple[int, Opener] | None = None
        for op in self.family.openers:
            if not op.leading:
                i = buf.find(op.marker)
                if i >= 0 and (best is None or i < best[0]):
                    best = (i, op)
        if self._at_boundary and self._leading:
            j = 0
            while j < len(buf) and buf[j] in WS:
                j += 1
            if j < len(buf):
                lead = next((o for o in self._leading if buf.startswith(o.marker, j)), None)
                if lead is not None and (best is None or j < best[0]):
                    best = (j, lead)
                elif lead is None:
                    self._at_boundary = False
        return best

    def _held(self, buf: str) -> int:
        """How many trailing characters could be the start of a marker."""
        hold = 0
        for mk in self._markers:
            for k in range(min(len(mk) - 1, len(buf)), hold, -1):
                if buf.endswith(mk[:k]):
                    hold = k
                    break
        return hold

    def _content_step(self) -> bool:
        buf = self._buf
        if self._after_call:
            j = 0
            while j < len(buf) and buf[j] in self._skip:
                j += 1
            buf = self._buf = buf[j:]
            if not buf:
                return False
            self._after_call = False
        found = self._locate(buf)
        if found is not None:
            idx, op = found
            text = buf[:idx].rstrip(WS)
            if text:
                self._content(text)
            self._pending_ws = buf[len(text) : idx]
            self._buf = buf[idx:]
            start = len(op.marker) if op.consume else 0
            cur = Cursor(self._buf, start, op.eager, self.family.allowed_names)
            cur.coercer = self.family.coercer
            self._cand = _Candidate(op.body(cur), cur, len(op.marker), len(self._events), op.sure)
            return True
        if self._final:
            if buf:
                self._content(buf)
            self._buf = ""
            return False
        text = buf[: len(buf) - self._held(buf)].rstrip(WS)
        if text:
            self._content(text)
            self._buf = buf[len(text) :]
        return False

    def _candidate_step(self) -> bool:
        cand = self._cand
        assert cand is not None
        cur = cand.cur
        cur.buf, cur.final = self._buf, self._final
        try:
            sig = cand.gen.send(None)
        except StopIteration as stop:
            self._done(stop.value, cur.pos)
            return True
        except Fail as f:
            self._send_spans(cur)  # arguments up to the break, at any split
            self._fail(f.pos)
            return True
        self._send_spans(cur)
        return sig == COMMIT

    def _header(self, name: str, start: int) -> _Sent:
        sent = _Sent(new_call_id(), start, [])
        self._open.append(sent)
        fn = {"name": name, "arguments": ""}
        tc = {"index": self._n_calls + len(self._open) - 1, "id": sent.id, "type": "function", "function": fn}
        self._events.append(StreamEvent(tool_call=tc))
        return sent

    def _room(self) -> int | None:
        """How many more calls may be reported (None: any number)."""
        if self.family.max_calls is None:
            return None
        return max(0, self.family.max_calls - self._n_calls)

    def _delayed(self, name: str) -> bool:
        """Arguments that coercion may change are sent once complete."""
        return self.family.coercer is not None and self.family.coercer.needs(name)

    def _piece(self, k: int, piece: str) -> None:
        self._open[k].pieces.append(piece)
        tc = {"index": self._n_calls + k, "function": {"arguments": piece}}
        self._events.append(StreamEvent(tool_call=tc))

    def _send_spans(self, cur: Cursor) -> None:
        """Send what is new of the committed calls (streams arguments as they are written)."""
        if not cur.eager or cur.partial is None or cur.scan is None:
            return
        room = self._room()
        for k, (name, start, end) in enumerate(cur.partial()):
            if room is not None and k >= room:
                break
            sent = self._open[k] if k < len(self._open) else self._header(name, start)
            if end > sent.pos and not self._delayed(name):
                self._piece(k, cur.scan.text(cur.buf, sent.pos, end))
                sent.pos = end

    def _send_calls(self, calls: Calls) -> None:
        """Send the complete calls: what has not been sent of them yet."""
        room = self._room()
        coercer = self.family.coercer
        for k, (name, args) in enumerate(calls):
            if room is not None and k >= room:
                break
            if coercer is not None:
                args = coercer.arguments(name, args)
            sent = self._open[k] if k < len(self._open) else self._header(name, 0)
            done = sent.text()
            if len(args) > len(done) and args.startswith(done):
                self._piece(k, args[len(done) :])

    def _end_candidate(self, pos: int) -> None:
        self._n_calls += len(self._open)
        self._open = []
        self._buf = self._buf[pos:]
        self._cand = None
        room = self._room()
        if room is not None and room <= 0:
            self._dropping = True

    @staticmethod
    def _sure(cand: _Candidate) -> bool:
        return cand.cur.sure if cand.cur.sure is not None else cand.sure

    def _cut_calls(self, cand: _Candidate) -> Calls:
        """The calls of a candidate the output ended in: complete ones, then the open one
        with the arguments read so far (a body reading non-JSON arguments says them)."""
        cur = cand.cur
        if cur.cut is not None:
            return cur.cut()
        if cur.scan is None or cur.partial is None:
            return []
        if not self._sure(cand) and not cur.eager and cur.allowed is None:
            return []  # bare JSON that was not streamed: a cut call only if it names a known tool
        calls = [(name, cur.scan.text(cur.buf, s, e)) for name, s, e in cur.partial()]
        if self._sure(cand) and not cur.scan.commit_at_open:
            named = cur.scan.named_calls(cur.buf)
            if len(named) > len(calls):
                calls = named
        return calls

    def _cut(self) -> bool:
        """The output ended inside the candidate: report its calls as cut, or (after a
        marker that only calls follow) drop it. False: it is content after all."""
        cand = self._cand
        assert cand is not None
        calls = self._cut_calls(cand)
        if not calls and not self._sure(cand):
            return False
        self._send_calls(calls)
        self.cut_call = True
        self._pending_ws = ""
        self._end_candidate(len(self._buf))
        self._after_call = self._at_boundary = True
        return True

    def _keep_committed(self) -> bool:
        """After a break: keep the calls already committed? (Whole-text mode takes them
        back when one's arguments never completed; a stream has already sent them.)"""
        if not self._open:
            return False
        if self.whole and not all(is_object(sent.text()) for sent in self._open):
            assert self._cand is not None
            del self._events[self._cand.mark :]
            self._open = []
            return False
        return True

    def _done(self, calls: Calls | None, pos: int) -> None:
        if calls is None:  # a complete value that is not a call: it is content
            if not self._keep_committed():
                self._content(self._pending_ws + self._buf[:pos])
            self._at_boundary = False
        else:
            self._send_calls(calls)
            self._after_call = self._at_boundary = True
        self._pending_ws = ""
        self._end_candidate(pos)

    def _fail(self, pos: int) -> None:
        if self._final and pos >= len(self._buf) and self._cut():
            return
        if self._keep_committed():  # committed calls stand; go on reading content where it broke
            self._end_candidate(min(pos, len(self._buf)))
        else:
            assert self._cand is not None
            n = self._cand.opener_len
            self._content(self._pending_ws + self._buf[:n])
            self._end_candidate(n)
        self._pending_ws = ""
        self._at_boundary = False


class ToolParser:
    """Tool-call parser for one model family (see :func:`kronk.parsers.get_tool_parser`)."""

    def __init__(self, family: Family) -> None:
        self.family = family

    @property
    def name(self) -> str:
        return self.family.name

    @property
    def handles_reasoning(self) -> bool:
        """Whether this format carries its own reasoning (harmony's analysis channel)."""
        return self.family.driver is not None

    def stream(self) -> StreamState:
        """A fresh incremental parser for one streamed output."""
        if self.family.driver is not None:
            return self.family.driver(self.family, False)  # type: ignore[no-any-return]
        return StreamState(self.family)

    def parse(self, text: str) -> ParsedOutput:
        """Split a whole output into content and tool calls; never raises on odd text.
        ``cut_call`` on the result: the output ended inside a call."""
        if self.family.driver is not None:
            state = self.family.driver(self.family, True)
        else:
            state = StreamState(self.family, whole=True)
        state.feed(text)
        out = collect(state.finish())
        out.cut_call = state.cut_call
        return out

    def __repr__(self) -> str:
        return f"ToolParser({self.family.name!r})"
