"""OpenAI's harmony format (gpt-oss): every part of the output is a message on a channel.

``<|channel|>analysis<|message|>...<|end|>`` is reasoning;
``<|start|>assistant<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}<|call|>``
is a call to NAME (the ``to=`` may also stand before ``<|channel|>``);
``<|channel|>final<|message|>...`` and commentary without a recipient are content.
The markup never reaches content. A message ends at ``<|end|>``, ``<|call|>``,
``<|return|>`` or the next header. Text outside any message is content.

A call is sent when its header is read; its arguments are the message text with the
surrounding whitespace removed, streamed as written (or sent whole at the end when the
tools' schemas may coerce them), ``{}`` when empty. They are not checked: what the
model wrote after a header that names a function is that call's arguments.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from kronk.parsers.reader import partial_suffix
from kronk.parsers.types import StreamEvent, coalesce, new_call_id

if TYPE_CHECKING:
    from kronk.parsers.base import Family

START, CHANNEL, MESSAGE = "<|start|>", "<|channel|>", "<|message|>"
END, CALL, RETURN = "<|end|>", "<|call|>", "<|return|>"
_HEADS = (START, CHANNEL)
_ENDS = (END, CALL, RETURN)
_OUT_MARKERS = _HEADS + _ENDS
_BODY_STOPS = _ENDS + _HEADS
_WS = " \t\r\n"
_HEAD_LIMIT = 1024  # a header longer than this is not one: its text is content

_RECIPIENT = re.compile(r"\bto=([^\s<]+)(?=[\s<])")
_CHANNEL = re.compile(r"<\|channel\|>\s*([\w-]+)")

_OUT, _HEAD, _BODY = range(3)


class HarmonyState:
    """Streams one harmony output (``feed`` / ``finish``); ``whole=True`` only gathers
    text until ``finish``. Same interface as :class:`kronk.parsers.base.StreamState`."""

    def __init__(self, family: Family, whole: bool = False) -> None:
        self.family = family
        self.whole = whole
        self.cut_call = False
        self._buf = ""
        self._mode = _OUT
        self._closed = False
        self._dropping = False
        self._events: list[StreamEvent] = []
        self._kind = "content"  # the open message's: "content", "reasoning" or "call"
        self._said: dict[str, bool] = {"content": False, "reasoning": False}  # something was sent
        self._fresh = False  # the open message has sent nothing yet
        self._n_calls = 0
        self._call_name = ""
        self._sent = ""  # the open call's arguments sent so far
        self._body = ""  # the open call's message text so far
        self._lead = True  # the open call's text is still leading whitespace

    # -- interface -------------------------------------------------------------------
    def feed(self, text: str) -> list[StreamEvent]:
        if self._closed:
            raise RuntimeError("feed() after finish()")
        if self._dropping:
            return []
        self._buf += text
        if self.whole:
            return []
        self._run(final=False)
        return self._take()

    def finish(self) -> list[StreamEvent]:
        if not self._closed:
            self._closed = True
            if not self._dropping:
                self._run(final=True)
        return self._take()

    def _take(self) -> list[StreamEvent]:
        events, self._events = coalesce(self._events), []
        return events

    # -- scanning --------------------------------------------------------------------
    def _run(self, final: bool) -> None:
        while not self._dropping:
            if self._mode == _OUT:
                more = self._out(final)
            elif self._mode == _HEAD:
                more = self._head(final)
            else:
                more = self._message(final)
            if not more:
                return
        self._buf = ""

    @staticmethod
    def _find(buf: str, markers: tuple[str, ...]) -> tuple[int, str] | None:
        best: tuple[int, str] | None = None
        for mk in markers:
            i = buf.find(mk)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, mk)
        return best

    def _out(self, final: bool) -> bool:
        """Between messages: text is content (whitespace before a marker is dropped)."""
        buf = self._buf
        found = self._find(buf, _OUT_MARKERS)
        if found is not None:
            i, mk = found
            self._text("content", buf[:i].rstrip(_WS))
            if mk in _HEADS:
                self._buf = buf[i:]
                self._mode = _HEAD
            else:
                self._buf = buf[i + len(mk) :]
            return True
        if final:
            keep = len(buf) - partial_suffix(buf, _OUT_MARKERS)
            self._text("content", buf[:keep])
            self._buf = ""
            return False
        keep = len(buf) - partial_suffix(buf, _OUT_MARKERS)
        text = buf[:keep].rstrip(_WS)
        self._text("content", text)
        self._buf = buf[len(text) :]
        return False

    def _head(self, final: bool) -> bool:
        """A header, from ``<|start|>`` or ``<|channel|>`` up to ``<|message|>``."""
        buf = self._buf
        i = buf.find(MESSAGE)
        if i < 0 or i > _HEAD_LIMIT:
            if len(buf) > _HEAD_LIMIT + len(MESSAGE):  # not a header after all
                self._text("content", buf[:_HEAD_LIMIT])
                self._buf = buf[_HEAD_LIMIT:]
                self._mode = _OUT
                return True
            if final:
                m = _RECIPIENT.search(buf)
                if m is not None:  # cut in the header of a call: the name is known
                    self._open_call(m.group(1))
                    self._close_call(cut=True)
                elif "to=" in buf:
                    self.cut_call = True
                self._buf = ""
                return False
            return False
        head = buf[:i]
        self._buf = buf[i + len(MESSAGE) :]
        self._mode = _BODY
        m = _RECIPIENT.search(head + "<")
        if m is not None:
            self._open_call(m.group(1))
            return True
        ch = _CHANNEL.search(head)
        self._kind = "reasoning" if ch is not None and ch.group(1) == "analysis" else "content"
        self._fresh = True
        return True

    def _message(self, final: bool) -> bool:
        buf = self._buf
        found = self._find(buf, _BODY_STOPS)
        if found is not None:
            i, mk = found
            self._body_text(buf[:i])
            self._buf = buf[i + len(mk) :] if mk in _ENDS else buf[i:]
            self._mode = _OUT
            if self._kind == "call":
                self._close_call(cut=False)
            return True
        keep = len(buf) - partial_suffix(buf, _BODY_STOPS)
        self._body_text(buf[:keep])
        self._buf = "" if final else buf[keep:]
        if final and self._kind == "call":
            self._close_call(cut=True)
        return False

    # -- output ----------------------------------------------------------------------
    def _text(self, kind: str, text: str) -> None:
        if not text:
            return
        if self._fresh and self._said[kind]:
            text = "\n\n" + text  # a new message of a kind already sent
        self._fresh = False
        self._said[kind] = True
        self._events.append(StreamEvent(content=text) if kind == "content" else StreamEvent(reasoning=text))

    def _body_text(self, text: str) -> None:
        if self._kind != "call":
            self._text(self._kind, text)
            return
        if self._lead:
            text = text.lstrip(_WS)
            if not text:
                return
            self._lead = False
        self._body += text
        if self._delayed():
            return
        body, end = self._body, len(self._body)
        while end > len(self._sent) and body[end - 1] in _WS:
            end -= 1  # trailing whitespace waits: the arguments end stripped
        if end > len(self._sent):
            self._piece(body[len(self._sent) : end])

    def _delayed(self) -> bool:
        coercer = self.family.coercer
        return coercer is not None and coercer.needs(self._call_name)

    def _piece(self, piece: str) -> None:
        self._sent += piece
        self._events.append(StreamEvent(tool_call={"index": self._n_calls, "function": {"arguments": piece}}))

    def _open_call(self, recipient: str) -> None:
        name = recipient.removeprefix("functions.")
        self._kind, self._call_name = "call", name
        self._sent, self._body, self._lead = "", "", True
        tc: dict[str, Any] = {
            "index": self._n_calls,
            "id": new_call_id(),
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        self._events.append(StreamEvent(tool_call=tc))

    def _close_call(self, cut: bool) -> None:
        body = self._body.strip(_WS) or "{}"
        coercer = self.family.coercer
        if coercer is not None:
            body = coercer.arguments(self._call_name, body)
        sent = self._sent
        if body.startswith(sent) and len(body) > len(sent):
            self._piece(body[len(sent) :])
        self._n_calls += 1
        self._kind = "content"
        self.cut_call = self.cut_call or cut
        limit = self.family.max_calls
        if limit is not None and self._n_calls >= limit:
            self._dropping = True
