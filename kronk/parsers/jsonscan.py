"""A resumable JSON scanner for tool-call bodies.

``JsonScan`` reads one JSON object or array out of a growing buffer, a piece at
a time, and says at each point whether what it has seen is a valid prefix, a
complete value, or not JSON. It notes where the members of each *call object*
sit (the top-level object, or each object directly inside a top-level array),
so a streaming parser can send a call's name as soon as it is known and its
``arguments`` text while it is still being written.

Raw control characters inside strings (small models put literal newlines in
code arguments) are accepted and escaped in the text handed out, so arguments
are always strict JSON.
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass, field
from typing import Any

WS = " \t\r\n"
ARGS_KEYS = ("arguments", "parameters")

MORE, DONE, ERROR, COMMIT = "more", "done", "error", "commit"

# scanner states
_VALUE, _VALUE_OR_CLOSE, _KEY_OR_CLOSE, _KEY, _COLON, _AFTER = range(6)
_STRING, _ESCAPE, _UNICODE, _LITERAL, _NUMBER = range(6, 11)

_STR_SPECIAL = re.compile(r'["\\\x00-\x1f]')
_NUMBER_RE = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?\Z")
_NUM_CHARS = frozenset("0123456789+-.eE")
_HEX = frozenset("0123456789abcdefABCDEF")
_LITERALS = {"t": "rue", "f": "alse", "n": "ull"}
_CTRL_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


@dataclass(slots=True)
class CallObject:
    """Where the members of one call object sit: key -> [start, end) (end -1 while open)."""

    members: dict[str, list[int]] = field(default_factory=dict)
    name: str | None = None
    committed: bool = False  # name known when its arguments object opened

    def args_key(self) -> str | None:
        for key in ARGS_KEYS:
            if key in self.members:
                return key
        return None


class JsonScan:
    """Scan one JSON object or array starting at ``start`` in a buffer that may still grow."""

    def __init__(self, start: int, *, commit_at_open: bool = False) -> None:
        self.start = start
        self.pos = start
        self.end = -1
        self.status = MORE
        # commit_at_open: the whole value is an arguments object (COMMIT right after its "{")
        self.commit_at_open = commit_at_open
        self.ctrl: list[int] = []
        self.objects: list[CallObject] = []
        self._state = _VALUE
        self._stack: list[str] = []
        self._call_depth = 0
        self._is_key = False
        self._key_start = 0
        self._key = ""
        self._lit = ""
        self._num_start = 0
        self._uni = 0

    # -- text handed out ---------------------------------------------------------------
    def text(self, buf: str, start: int, end: int) -> str:
        """``buf[start:end]`` with raw control characters inside strings escaped."""
        lo = bisect.bisect_left(self.ctrl, start)
        hi = bisect.bisect_left(self.ctrl, end)
        if lo == hi:
            return buf[start:end]
        parts: list[str] = []
        prev = start
        for p in self.ctrl[lo:hi]:
            ch = buf[p]
            parts.append(buf[prev:p])
            parts.append(_CTRL_ESCAPES.get(ch, f"\\u{ord(ch):04x}"))
            prev = p + 1
        parts.append(buf[prev:end])
        return "".join(parts)

    def value_text(self, buf: str) -> str:
        """The whole value's text so far (all of it once DONE)."""
        return self.text(buf, self.start, self.end if self.end >= 0 else self.pos)

    def value(self, buf: str) -> Any:
        return json.loads(buf[self.start : self.end], strict=False)

    def partial_calls(self, buf: str) -> list[tuple[str, int, int]]:
        """(name, start, end) of the arguments so far of the leading call objects that were
        committed: their name was known when their arguments object opened."""
        out: list[tuple[str, int, int]] = []
        for obj in self.objects:
            key = obj.args_key()
            if not obj.committed or not obj.name or key is None:
                break
            s, e = obj.members[key]
            if buf[s] != "{":
                break
            out.append((obj.name, s, e if e >= 0 else self.pos))
        return out

    def named_calls(self, buf: str) -> list[tuple[str, str]]:
        """(name, arguments text so far) of the leading call objects whose name is known,
        committed or not ("{}" where no arguments were read): the calls of a cut output."""
        out: list[tuple[str, str]] = []
        for obj in self.objects:
            if not obj.name:
                break
            key = obj.args_key()
            if key is None:
                out.append((obj.name, "{}"))
                continue
            s, e = obj.members[key]
            out.append((obj.name, self.text(buf, s, e if e >= 0 else self.pos)))
        return out

    # -- scanning ----------------------------------------------------------------------
    def run(self, buf: str, stop_on_commit: bool = False) -> str:
        """Scan what ``buf`` holds past the last position; returns MORE, DONE, ERROR or COMMIT."""
        if self.status in (DONE, ERROR):
            return self.status
        i, n = self.pos, len(buf)
        stack = self._stack
        st = self._state
        while i < n:
            c = buf[i]
            if st == _STRING:
                m = _STR_SPECIAL.search(buf, i)
                if m is None:
                    i = n
                    break
                i = m.start()
                c = buf[i]
                i += 1
                if c == "\\":
                    st = _ESCAPE
                elif c != '"':
                    self.ctrl.append(i - 1)
                elif self._is_key:
                    st = _COLON
                    if self._at_call_level():
                        self._key = json.loads(buf[self._key_start : i], strict=False)
                else:
                    st = _AFTER
                    self._value_done(buf, i)
                continue
            if st == _ESCAPE:
                if c == "u":
                    st, self._uni = _UNICODE, 4
                elif c in '"\\/bfnrt':
                    st = _STRING
                else:
                    return self._fail(i)
                i += 1
                continue
            if st == _UNICODE:
                if c not in _HEX:
                    return self._fail(i)
                self._uni -= 1
                if self._uni == 0:
                    st = _STRING
                i += 1
                continue
            if st == _LITERAL:
                if c != self._lit[0]:
                    return self._fail(i)
                self._lit = self._lit[1:]
                i += 1
                if not self._lit:
                    st = _AFTER
                    self._value_done(buf, i)
                continue
            if st == _NUMBER:
                if c in _NUM_CHARS:
                    i += 1
                    continue
                if not _NUMBER_RE.match(buf, self._num_start, i):
                    return self._fail(i)
                st = _AFTER
                self._value_done(buf, i)
                continue  # this character is read again, after the number
            if c in WS:
                i += 1
                continue
            if st in (_VALUE, _VALUE_OR_CLOSE):
                if st == _VALUE_OR_CLOSE and c == "]":
                    stack.pop()
                    st = _AFTER
                    i += 1
                    if self._value_done(buf, i):
                        return self._done(i)
                    continue
                if not stack:
                    if c not in "{[" or self._call_depth:
                        return self._fail(i)
                    self._call_depth = 1 if c == "{" else 2
                commit = self._value_start(buf, i, c)
                if c == "{":
                    stack.append(c)
                    st = _KEY_OR_CLOSE
                    if len(stack) == self._call_depth and not self.commit_at_open:
                        self.objects.append(CallObject())
                elif c == "[":
                    stack.append(c)
                    st = _VALUE_OR_CLOSE
                elif c == '"':
                    st, self._is_key = _STRING, False
                elif c in _LITERALS:
                    st, self._lit = _LITERAL, _LITERALS[c]
                elif c == "-" or c.isdigit():
                    st, self._num_start = _NUMBER, i
                else:
                    return self._fail(i)
                i += 1
                if commit or (self.commit_at_open and len(stack) == 1 and c == "{"):
                    self.pos, self._state = i, st
                    if stop_on_commit:
                        return COMMIT
                continue
            if st in (_KEY_OR_CLOSE, _KEY):
                if c == '"':
                    st, self._is_key, self._key_start = _STRING, True, i
                    i += 1
                    continue
                if st == _KEY_OR_CLOSE and c == "}":
                    stack.pop()
                    st = _AFTER
                    i += 1
                    if self._value_done(buf, i):
                        return self._done(i)
                    continue
                return self._fail(i)
            if st == _COLON:
                if c != ":":
                    return self._fail(i)
                st = _VALUE
                i += 1
                continue
            # _AFTER: a value inside a container has ended
            if c == ",":
                st = _KEY if stack[-1] == "{" else _VALUE
                i += 1
                continue
            if (c == "}" and stack[-1] == "{") or (c == "]" and stack[-1] == "["):
                stack.pop()
                i += 1
                if self._value_done(buf, i):
                    return self._done(i)
                continue
            return self._fail(i)
        self.pos, self._state = i, st
        return MORE

    def _at_call_level(self) -> bool:
        stack = self._stack
        return (
            not self.commit_at_open
            and len(stack) == self._call_depth
            and stack[-1] == "{"
            and (len(stack) == 1 or stack[0] == "[")
        )

    def _value_start(self, buf: str, i: int, c: str) -> bool:
        """Note where a call object's member value begins; True when a call becomes committable."""
        if not self._at_call_level():
            return False
        obj = self.objects[-1]
        obj.members[self._key] = [i, -1]
        if c == "{" and self._key == obj.args_key() and obj.name:
            obj.committed = True
        return obj.committed and self._key == obj.args_key()

    def _value_done(self, buf: str, i: int) -> bool:
        """A value ended at ``i``; True when it was the top-level value."""
        if not self._stack:
            return True
        if self._at_call_level():
            obj = self.objects[-1]
            span = obj.members.get(self._key)
            if span is not None and span[1] < 0:
                span[1] = i
                if self._key == "name":
                    obj.name = None
                    if buf[span[0]] == '"':
                        name = json.loads(buf[span[0] : i], strict=False).strip()
                        obj.name = name or None
        return False

    def _done(self, i: int) -> str:
        self.pos = self.end = i
        self.status = DONE
        return DONE

    def _fail(self, i: int) -> str:
        self.pos = i
        self.status = ERROR
        return ERROR


def calls_from_value(
    scan: JsonScan,
    buf: str,
    *,
    require_args: bool = False,
    allowed_names: frozenset[str] | None = None,
) -> list[tuple[str, str]] | None:
    """The (name, arguments JSON text) pairs a complete value holds, or None if it is not calls.

    A call is ``{"name": str, "arguments": object|JSON-text|null}`` ("parameters" is read
    as "arguments"; ``{"type": "function", "function": {...}}`` is unwrapped). An
    arguments object keeps the model's own text, so it matches what was streamed.
    """
    try:
        value = scan.value(buf)
    except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
        return None
    items = value if isinstance(value, list) else [value]
    if not items:
        return None
    calls: list[tuple[str, str]] = []
    for k, item in enumerate(items):
        if not isinstance(item, dict):
            return None
        fn: dict[str, Any] = item
        spans: CallObject | None = scan.objects[k] if k < len(scan.objects) else None
        if "name" not in item and isinstance(item.get("function"), dict):
            fn, spans = item["function"], None
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            return None
        name = name.strip()
        if allowed_names is not None and name not in allowed_names:
            return None
        key = next((k2 for k2 in ARGS_KEYS if k2 in fn), None)
        args = fn.get(key) if key else None
        if key is None and require_args:
            return None
        if args is None:
            text = "{}"
        elif isinstance(args, dict):
            if spans is not None and key in spans.members and spans.members[key][1] >= 0:
                text = scan.text(buf, *spans.members[key])
            else:
                text = json.dumps(args, ensure_ascii=False)
        elif isinstance(args, str):
            try:
                parsed = json.loads(args)
            except ValueError:
                return None
            if not isinstance(parsed, dict):
                return None
            text = args.strip()
        else:
            return None
        calls.append((name, text))
    return calls
