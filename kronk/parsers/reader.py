"""Reading a tool call out of a growing buffer: the pieces family bodies are built from.

A body is a generator over a :class:`Cursor`. It yields ``NEED`` when it must see
more text (or ``COMMIT`` when a call's name and the opening of its arguments
have just been read), raises :class:`Fail` when the text is not a call, and
returns the calls it read (``None``: a complete JSON value that is not a call).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Generator
from typing import TypeVar

from kronk.parsers.coerce import Coercer
from kronk.parsers.jsonscan import COMMIT, DONE, ERROR, WS, JsonScan

NEED = "need"
T = TypeVar("T")
Gen = Generator[str, None, T]
Calls = list[tuple[str, str]]  # (name, arguments JSON text)
Spans = list[tuple[str, int, int]]  # (name, start, end) of arguments text in the buffer

_NAME_RE = re.compile(r"[\w.\-:]*")
_NAME_LIMIT = 256


class Fail(Exception):
    """The text at the candidate is not a call; ``pos`` is where that became clear."""

    def __init__(self, pos: int) -> None:
        super().__init__(pos)
        self.pos = pos


class Cursor:
    """A body's view of the candidate text: the buffer so far and a read position."""

    __slots__ = ("allowed", "buf", "coercer", "cut", "eager", "final", "partial", "pos", "scan", "sure")

    def __init__(self, buf: str, pos: int, eager: bool, allowed: frozenset[str] | None) -> None:
        self.buf = buf
        self.pos = pos
        self.final = False
        self.eager = eager
        self.allowed = allowed
        # the calls committed so far (set by json_value): their arguments' spans in buf
        self.partial: Callable[[], Spans] | None = None
        self.scan: JsonScan | None = None
        # a body reading non-JSON arguments: the calls read so far, for an output cut mid-call
        self.cut: Callable[[], Calls] | None = None
        self.sure: bool | None = None  # a body may decide the opener's ``sure`` (a fence's language)
        self.coercer: Coercer | None = None  # the tools' schemas (for raw-text parameter values)

    def committed_calls(self) -> Calls:
        """The committed calls with their arguments text so far."""
        if not self.eager or self.partial is None or self.scan is None:
            return []
        return [(name, self.scan.text(self.buf, s, e)) for name, s, e in self.partial()]


# -- primitives for bodies -------------------------------------------------------------


def skip_ws(cur: Cursor, chars: str = WS) -> Gen[None]:
    """Skip whitespace (or the given characters)."""
    while True:
        buf, p = cur.buf, cur.pos
        while p < len(buf) and buf[p] in chars:
            p += 1
        cur.pos = p
        if p < len(buf) or cur.final:
            return
        yield NEED


def peek(cur: Cursor) -> Gen[str]:
    """The next character, or "" at the end of the text."""
    while cur.pos >= len(cur.buf):
        if cur.final:
            return ""
        yield NEED
    return cur.buf[cur.pos]


def optional_marker(cur: Cursor, marker: str) -> Gen[bool]:
    """Consume ``marker`` if the text goes on with it."""
    while True:
        rest = cur.buf[cur.pos : cur.pos + len(marker)]
        if rest == marker:
            cur.pos += len(marker)
            return True
        if cur.final or not marker.startswith(rest):
            return False
        yield NEED


def read_name(cur: Cursor, markers: tuple[str, ...], pattern: re.Pattern[str] = _NAME_RE) -> Gen[tuple[str, str]]:
    """Name characters up to one of ``markers`` (consumed): (name, marker); Fail on anything else."""
    while True:
        buf = cur.buf
        q = pattern.match(buf, cur.pos).end()  # type: ignore[union-attr]
        if q - cur.pos > _NAME_LIMIT:
            raise Fail(q)
        for mk in markers:
            if buf.startswith(mk, q):
                name = buf[cur.pos : q]
                cur.pos = q + len(mk)
                return name, mk
        rest = buf[q:]
        if cur.final or not any(mk.startswith(rest) for mk in markers):
            raise Fail(q)
        yield NEED


def expect_one(cur: Cursor, markers: tuple[str, ...], cut_on_partial: bool = True) -> Gen[str | None]:
    """Consume whichever of ``markers`` the text goes on with (None: something else, or the
    end). At the end of the output a piece of one is a cut (``Fail`` at the end), or, with
    ``cut_on_partial=False`` (optional closers), consumed."""
    while True:
        rest = cur.buf[cur.pos :]
        for mk in markers:
            if rest.startswith(mk):
                cur.pos += len(mk)
                return mk
        if not rest or not any(mk.startswith(rest) for mk in markers):
            if rest or cur.final:
                return None
        elif cur.final:
            if cut_on_partial:
                raise Fail(len(cur.buf))
            cur.pos = len(cur.buf)
            return None
        yield NEED


def read_until(cur: Cursor, markers: tuple[str, ...]) -> Gen[tuple[str, str]]:
    """The text up to the first of ``markers`` (consumed): (text, marker). Ending first is a
    cut: ``Fail`` at the end of the output."""
    longest = max(len(m) for m in markers)
    scan_from = cur.pos
    while True:
        buf = cur.buf
        best: tuple[int, str] | None = None
        for mk in markers:
            i = buf.find(mk, scan_from)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, mk)
        if best is not None:
            text = buf[cur.pos : best[0]]
            cur.pos = best[0] + len(best[1])
            return text, best[1]
        if cur.final:
            raise Fail(len(buf))
        scan_from = max(cur.pos, len(buf) - longest + 1)
        yield NEED


def partial_suffix(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that is a proper prefix of one of ``markers``."""
    best = 0
    for mk in markers:
        for k in range(min(len(mk) - 1, len(text)), best, -1):
            if text.endswith(mk[:k]):
                best = k
                break
    return best


def read_word(cur: Cursor) -> Gen[str]:
    """Letters, digits and underscores (e.g. a code fence's language)."""
    while True:
        m = _NAME_RE.match(cur.buf, cur.pos)
        assert m is not None
        if m.end() < len(cur.buf) or cur.final:
            cur.pos = m.end()
            return m.group()
        yield NEED


def json_value(cur: Cursor, name: str | None = None) -> Gen[JsonScan]:
    """One JSON object or array. With ``name`` the value is that call's arguments."""
    scan = JsonScan(cur.pos, commit_at_open=name is not None)
    buf_of = cur  # the cursor's buffer grows; read it at call time
    if name is None:
        allowed = cur.allowed

        def partial() -> Spans:
            spans = scan.partial_calls(buf_of.buf)
            if allowed is not None:
                ok = 0
                while ok < len(spans) and spans[ok][0] in allowed:
                    ok += 1
                spans = spans[:ok]
            return spans
    else:

        def partial() -> Spans:
            if scan.pos > scan.start and buf_of.buf[scan.start] == "{":
                return [(name, scan.start, scan.end if scan.end >= 0 else scan.pos)]
            return []

    cur.partial, cur.scan = partial, scan
    while True:
        st = scan.run(cur.buf, stop_on_commit=cur.eager)
        if st == DONE:
            cur.pos = scan.end
            return scan
        if st == ERROR:
            raise Fail(scan.pos)
        if st == COMMIT:
            yield COMMIT
            continue
        if cur.final:
            raise Fail(len(cur.buf))
        yield NEED


def no_calls(cur: Cursor) -> Gen[Calls]:
    """A body for wrapper markers (e.g. DeepSeek's tool-calls-begin): consumed, no call."""
    return []
    yield NEED  # pragma: no cover - makes this a generator


def is_object(text: str) -> bool:
    """Whether ``text`` is a complete JSON object."""
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False
