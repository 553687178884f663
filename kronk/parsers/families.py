"""The tool-call formats of the model families people run, and choosing one for a model."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from collections.abc import Iterable
from typing import Any

from kronk.parsers.base import Family, Opener, ToolParser
from kronk.parsers.coerce import Coercer
from kronk.parsers.harmony import HarmonyState
from kronk.parsers.jsonscan import calls_from_value
from kronk.parsers.prompt import template_supports_tools
from kronk.parsers.pycall import PyScan, calls_from_source, cut_calls
from kronk.parsers.reader import (
    NEED,
    Calls,
    Cursor,
    Fail,
    Gen,
    expect_one,
    is_object,
    json_value,
    no_calls,
    optional_marker,
    partial_suffix,
    peek,
    read_name,
    read_until,
    read_word,
    skip_ws,
)

# DeepSeek's markers use U+FF5C (fullwidth vertical line) and U+2581 (lower one eighth block).
DS_CALLS_BEGIN = "<\uff5ctool\u2581calls\u2581begin\uff5c>"
DS_CALLS_END = "<\uff5ctool\u2581calls\u2581end\uff5c>"
DS_CALL_BEGIN = "<\uff5ctool\u2581call\u2581begin\uff5c>"
DS_CALL_END = "<\uff5ctool\u2581call\u2581end\uff5c>"
DS_SEP = "<\uff5ctool\u2581sep\uff5c>"

_FENCE_LANGS = frozenset({"", "json", "tool_call", "tool_calls", "tool_code", "function_call"})
_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")


# -- bodies ----------------------------------------------------------------------------


def _json_calls(cur: Cursor) -> Gen[Calls | None]:
    """Whitespace, then a call object or an array of them.

    When the JSON breaks after calls were committed and their arguments are complete
    (a missing ``}`` or ``]``), those calls stand and reading goes on at the break.
    """
    yield from skip_ws(cur)
    try:
        scan = yield from json_value(cur)
    except Fail as fail:
        calls = cur.committed_calls()
        if not calls or not all(is_object(args) for _, args in calls):
            raise
        cut = cur.final and fail.pos >= len(cur.buf) and cur.scan is not None
        if cut and len(cur.scan.named_calls(cur.buf)) > len(calls):  # type: ignore[union-attr]
            raise  # cut off inside a further call: that one is reported too
        cur.pos = fail.pos
        yield from skip_ws(cur, " \t\r\n}]")  # closers that were misplaced
        return calls
    return calls_from_value(scan, cur.buf)


def _hermes(cur: Cursor) -> Gen[Calls | None]:
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the close tag may be missing)."""
    calls = yield from _json_calls(cur)
    if calls is not None:
        yield from skip_ws(cur)
        yield from optional_marker(cur, "</tool_call>")
    return calls


def _nemotron(cur: Cursor) -> Gen[Calls | None]:
    """``<TOOLCALL>[{"name": ..., "arguments": {...}}, ...]</TOOLCALL>``."""
    calls = yield from _json_calls(cur)
    if calls is not None:
        yield from skip_ws(cur)
        yield from optional_marker(cur, "</TOOLCALL>")
    return calls


def _bare_json(cur: Cursor) -> Gen[Calls | None]:
    """A JSON value with no marker: a call only if it has a name and an arguments key."""
    scan = yield from json_value(cur)
    return calls_from_value(scan, cur.buf, require_args=True, allowed_names=cur.allowed)


def _fenced_json(cur: Cursor) -> Gen[Calls | None]:
    """A fenced block (after the opening backticks) holding a call as JSON."""
    lang = yield from read_word(cur)
    if lang.lower() not in _FENCE_LANGS:
        raise Fail(cur.pos)
    return (yield from _fence_body_json(cur))


def _fence_body_json(cur: Cursor) -> Gen[Calls | None]:
    yield from skip_ws(cur)
    calls = yield from _bare_json(cur)
    if calls is not None:
        yield from skip_ws(cur)
        yield from optional_marker(cur, "```")
    return calls


def _python_tag(cur: Cursor) -> Gen[Calls | None]:
    """Llama 3 after ``<|python_tag|>``: JSON call(s), or a built-in tool as ``name.call(k=v)``."""
    yield from skip_ws(cur)
    c = yield from peek(cur)
    if c and c in "{[":
        scan = yield from json_value(cur)
        calls = calls_from_value(scan, cur.buf)
        if calls is not None:
            yield from skip_ws(cur)
            yield from optional_marker(cur, "<|eom_id|>")
        return calls
    while not cur.final:  # Python syntax: only the end of the output ends it
        yield NEED
    call = parse_python_call(cur.buf[cur.pos :])
    if call is None:
        raise Fail(cur.pos)
    cur.pos = len(cur.buf)
    return [call]


def _mistral(cur: Cursor) -> Gen[Calls | None]:
    """After ``[TOOL_CALLS]``: a JSON array of calls, or ``name[ARGS]{...}``
    (optionally ``name[CALL_ID]id[ARGS]{...}``)."""
    yield from skip_ws(cur)
    c = yield from peek(cur)
    if c and c in "{[":
        scan = yield from json_value(cur)
        return calls_from_value(scan, cur.buf)
    name, marker = yield from read_name(cur, ("[ARGS]", "[CALL_ID]"))
    name = name.strip()
    if not name:
        raise Fail(cur.pos)
    if marker == "[CALL_ID]":
        yield from read_name(cur, ("[ARGS]",))
    return (yield from _named_args(cur, name))


def _named_args(cur: Cursor, name: str) -> Gen[Calls | None]:
    yield from skip_ws(cur)
    scan = yield from json_value(cur, name=name)
    if cur.buf[scan.start] != "{":
        return None
    return [(name, scan.value_text(cur.buf))]


def _deepseek_call(cur: Cursor) -> Gen[Calls | None]:
    """One DeepSeek call, after its call-begin marker.

    V3 / R1: ``function<sep>NAME\\n```json\\n{...}\\n```<call-end>``;
    V3.1: ``NAME<sep>{...}<call-end>``.
    """
    yield from skip_ws(cur)
    name = (yield from read_name(cur, (DS_SEP,)))[0].strip()
    c = yield from peek(cur)
    fenced = False
    if name == "function" and c in _NAME_START:
        name = (yield from read_name(cur, ("\n",)))[0].strip()
        yield from skip_ws(cur)
        fenced = yield from optional_marker(cur, "```")
        if fenced:
            yield from read_word(cur)
    if not name:
        raise Fail(cur.pos)
    calls = yield from _named_args(cur, name)
    if calls is not None:
        yield from skip_ws(cur)
        if fenced and (yield from optional_marker(cur, "```")):
            yield from skip_ws(cur)
        yield from optional_marker(cur, DS_CALL_END)
    return calls


def parse_python_call(src: str) -> tuple[str, str] | None:
    """``brave_search.call(query="x")`` or ``f(a=1)`` -> (name, arguments JSON); None if not that."""
    src = src.strip()
    for stop in ("<|eom_id|>", "<|eot_id|>"):
        src = src.removesuffix(stop).strip()
    try:
        node = ast.parse(src, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(node, ast.Call) or node.args:
        return None
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr == "call" and isinstance(func.value, ast.Name):
        name = func.value.id
    elif isinstance(func, ast.Name):
        name = func.id
    else:
        return None
    args: dict[str, object] = {}
    for kw in node.keywords:
        if kw.arg is None:
            return None
        try:
            args[kw.arg] = ast.literal_eval(kw.value)
        except (ValueError, TypeError, SyntaxError, RecursionError):
            return None
    try:
        return name, json.dumps(args, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return None


def _allowed_calls(calls: Calls, allowed: frozenset[str] | None) -> bool:
    return allowed is None or all(name in allowed for name, _ in calls)


def _python(cur: Cursor, until: str | None, sure: bool) -> Gen[Calls | None]:
    """Calls written as Python, up to ``until`` (a closing fence) or, without it, to the
    bracket that closes the one at the cursor. Python that is not calls is content."""
    scan = PyScan(cur.pos)

    def cut() -> Calls:
        calls = cut_calls(cur.buf, scan, end=scan.pos)
        if not sure and (cur.allowed is None or not _allowed_calls(calls, cur.allowed)):
            return []  # a bare list in prose, cut: a call only if it names a known tool
        return calls

    cur.cut = cut
    while True:
        end = scan.run(cur.buf, until, final=cur.final)
        if end == -2:
            raise Fail(scan.pos)
        if end >= 0:
            break
        if cur.final:
            raise Fail(len(cur.buf))
        yield NEED
    calls = calls_from_source(cur.buf[scan.start : end])
    if calls is None or not _allowed_calls(calls, cur.allowed):
        if until is not None:
            raise Fail(end)
        cur.pos = end
        return None  # a complete list that is not calls: content
    cur.pos = end + len(until or "")
    return calls


def _bracket(cur: Cursor) -> Gen[Calls | None]:
    """At ``[``: a JSON array of calls, or a Python list of them (``[f(a=1), g(b=2)]``)."""
    start = cur.pos
    cur.pos += 1
    yield from skip_ws(cur)
    c = yield from peek(cur)
    cur.pos = start
    if c == "{":
        return (yield from _bare_json(cur))
    if c and c in _NAME_START:
        return (yield from _python(cur, None, sure=False))
    raise Fail(start + 1)


def _py_list(cur: Cursor) -> Gen[Calls | None]:
    """At ``[``: a Python list of calls only (Llama 3.2 / 4 "pythonic")."""
    return (yield from _python(cur, None, sure=False))


def _python_block(cur: Cursor) -> Gen[Calls | None]:
    """Llama 4: ``<|python_start|>[f(a=1)]<|python_end|>``."""
    yield from skip_ws(cur)
    cur.sure = True
    calls = yield from _python(cur, "<|python_end|>", sure=True)
    return calls


def _gemma_fence(cur: Cursor) -> Gen[Calls | None]:
    """After the backticks: ```` ```tool_code ```` holds Python calls (Gemma 3), other
    fences JSON as in ``generic``."""
    lang = (yield from read_word(cur)).lower()
    if lang == "tool_code":
        cur.sure = True
        yield from skip_ws(cur)
        c = yield from peek(cur)
        if c == "{":
            return (yield from _fence_body_json(cur))
        return (yield from _python(cur, "```", sure=True))
    if lang not in _FENCE_LANGS:
        raise Fail(cur.pos)
    return (yield from _fence_body_json(cur))


# -- Qwen3-Coder's XML ---------------------------------------------------------------------

_PARAM_ENDS = ("</parameter>", "<parameter=", "</function>")


class _XmlCalls:
    """What a Qwen3-Coder body has read: finished calls and the open one."""

    def __init__(self, cur: Cursor) -> None:
        self.cur = cur
        self.done: Calls = []
        self.name: str | None = None
        self.params: dict[str, Any] = {}
        self.key: str | None = None  # the open parameter
        self.start = 0  # where its value starts

    def value(self, key: str, raw: str) -> Any:
        if raw.startswith("\r\n"):
            raw = raw[2:]
        elif raw.startswith("\n"):
            raw = raw[1:]
        raw = raw.removesuffix("\n").removesuffix("\r")
        coercer = self.cur.coercer
        return coercer.param(self.name or "", key, raw) if coercer is not None else raw

    def cut(self) -> Calls:
        calls = list(self.done)
        if self.name:
            params = dict(self.params)
            if self.key is not None:
                raw = self.cur.buf[self.start :]
                raw = raw[: len(raw) - partial_suffix(raw, _PARAM_ENDS)]
                params[self.key] = self.value(self.key, raw)
            calls.append((self.name, json.dumps(params, ensure_ascii=False)))
        return calls


def _xml_function(cur: Cursor, st: _XmlCalls) -> Gen[None]:
    """After ``<function=``: ``NAME>`` then ``<parameter=KEY>\\nVALUE\\n</parameter>``s, then
    ``</function>``. A missing ``</parameter>`` ends at the next parameter or the function end."""
    name = (yield from read_name(cur, (">",)))[0].strip()
    if not name:
        raise Fail(cur.pos)
    st.name, st.params = name, {}
    while True:
        yield from skip_ws(cur)
        mk = yield from expect_one(cur, ("<parameter=", "</function>"))
        if mk is None:
            raise Fail(cur.pos)
        if mk == "</function>":
            break
        key = (yield from read_name(cur, (">",)))[0].strip()
        if not key:
            raise Fail(cur.pos)
        st.key, st.start = key, cur.pos
        raw, end = yield from read_until(cur, _PARAM_ENDS)
        if end != "</parameter>":
            cur.pos -= len(end)  # read again: it starts the next parameter / ends the function
        st.params[key] = st.value(key, raw)
        st.key = None
    st.done.append((name, json.dumps(st.params, ensure_ascii=False)))
    st.name = None


def _xml_calls(cur: Cursor, st: _XmlCalls) -> Gen[Calls | None]:
    """One or more functions (after the first ``<function=``), then an optional ``</tool_call>``."""
    while True:
        yield from _xml_function(cur, st)
        yield from skip_ws(cur)
        mk = yield from expect_one(cur, ("<function=", "</tool_call>"), cut_on_partial=False)
        if mk != "<function=":
            return st.done


def _qwen3_coder(cur: Cursor) -> Gen[Calls | None]:
    """After ``<tool_call>``: Qwen3-Coder's ``<function=NAME>`` XML, or Hermes JSON."""
    yield from skip_ws(cur)
    c = yield from peek(cur)
    if c in "{[" and c:
        return (yield from _hermes(cur))
    st = _XmlCalls(cur)
    cur.cut = st.cut
    if (yield from expect_one(cur, ("<function=",))) is None:
        raise Fail(cur.pos)
    return (yield from _xml_calls(cur, st))


def _xml_bare(cur: Cursor) -> Gen[Calls | None]:
    """``<function=NAME>...</function>`` without the ``<tool_call>`` around it."""
    st = _XmlCalls(cur)
    cur.cut = st.cut
    return (yield from _xml_calls(cur, st))


# -- families --------------------------------------------------------------------------

_HERMES = (Opener("<tool_call>", _hermes),)
_BARE_JSON = (
    Opener("{", _bare_json, consume=False, eager=False, sure=False),
    Opener("[", _bare_json, consume=False, eager=False, sure=False),
)

_FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("hermes", _HERMES),
        Family(
            "llama3",
            (
                Opener("<|python_tag|>", _python_tag),
                Opener("{", _bare_json, leading=True, consume=False, sure=False),
                Opener("[", _bare_json, leading=True, consume=False, sure=False),
            ),
            ";",
        ),
        Family("mistral", (Opener("[TOOL_CALLS]", _mistral),)),
        Family("granite", (Opener("<|tool_call|>", _json_calls),)),
        Family("phi4", (Opener("functools", _json_calls, sure=False),)),
        Family(
            "deepseek",
            (
                Opener(DS_CALLS_BEGIN, no_calls),
                Opener(DS_CALL_BEGIN, _deepseek_call),
                Opener(DS_CALLS_END, no_calls),
            ),
        ),
        Family(
            "qwen3_coder",
            (Opener("<tool_call>", _qwen3_coder, eager=False), Opener("<function=", _xml_bare, eager=False)),
        ),
        Family("harmony", (), driver=HarmonyState),
        Family(
            "gemma",
            (
                *_HERMES,
                Opener("```", _gemma_fence, eager=False, sure=False),
                Opener("{", _bare_json, consume=False, eager=False, sure=False),
                Opener("[", _bracket, consume=False, eager=False, sure=False),
            ),
        ),
        Family("nemotron", (Opener("<TOOLCALL>", _nemotron),)),
        Family(
            "pythonic",
            (
                Opener("<|python_start|>", _python_block, eager=False),
                Opener("[", _py_list, leading=True, consume=False, eager=False, sure=False),
            ),
            ",;",
        ),
        Family(
            "generic",
            (*_HERMES, Opener("```", _fenced_json, eager=False, sure=False), *_BARE_JSON),
            ",;",
        ),
    )
}

TOOL_PARSERS: tuple[str, ...] = tuple(_FAMILIES)


def get_tool_parser(
    name: str,
    tool_names: Iterable[str] | None = None,
    *,
    tools: Iterable[dict[str, Any]] | None = None,
    max_calls: int | None = None,
) -> ToolParser:
    """The tool-call parser for a family (one of ``TOOL_PARSERS``).

    ``tool_names``: the request's function names; given, a call written as bare JSON
    (generic, Llama 3, Gemma) or a bare Python list counts only if it names one of
    them, so ordinary answers stay content. ``tools``: the request's OpenAI tool dicts;
    arguments are coerced to their parameters' JSON Schemas (``"42"`` for an integer
    becomes ``42``), and their names serve as ``tool_names`` when that is not given.
    ``max_calls``: report at most this many calls and drop the rest of the output
    (``parallel_tool_calls: false`` is ``max_calls=1``).
    """
    key = name.strip().lower()
    if key not in _FAMILIES:
        raise ValueError(f"unknown tool parser {name!r}; known: {', '.join(TOOL_PARSERS)}")
    if max_calls is not None and (not isinstance(max_calls, int) or max_calls < 1):
        raise ValueError(f"max_calls must be a positive integer or None, not {max_calls!r}")
    coercer = Coercer(tools) if tools is not None else None
    if tool_names is not None:
        allowed: frozenset[str] | None = frozenset(tool_names)
    else:
        allowed = coercer.names if coercer is not None else None
    family = dataclasses.replace(
        _FAMILIES[key],
        allowed_names=allowed,
        coercer=coercer if coercer is not None and coercer.schemas else None,
        max_calls=max_calls,
    )
    return ToolParser(family)


def _has(*markers: str) -> Any:
    return lambda t: all(m in t for m in markers)


# (test on a chat template, family), checked in this order
_TEMPLATE_MARKERS: tuple[tuple[Any, str], ...] = (
    (_has("<|channel|>"), "harmony"),
    (_has("tool\u2581calls\u2581begin"), "deepseek"),
    (_has("<function=", "<parameter="), "qwen3_coder"),
    (_has("[TOOL_CALLS]"), "mistral"),
    (_has("<TOOLCALL>"), "nemotron"),
    (_has("<|tool_call|>"), "granite"),
    (_has("functools"), "phi4"),
    (_has("<tool_call>"), "hermes"),
    (_has("<|python_start|>"), "pythonic"),
    (_has("<|python_tag|>"), "llama3"),
    (lambda t: "<start_of_turn>" in t and template_supports_tools(t), "gemma"),
)

# (substring of a lower-cased model name, family), checked in this order
_NAME_HINTS: tuple[tuple[str, str], ...] = (
    ("gpt-oss", "harmony"),
    ("gptoss", "harmony"),
    ("deepseek", "deepseek"),
    ("qwen3-coder", "qwen3_coder"),
    ("qwen3coder", "qwen3_coder"),
    ("nemotron", "nemotron"),
    ("granite", "granite"),
    ("phi-4", "phi4"),
    ("phi4", "phi4"),
    ("mistral", "mistral"),
    ("mixtral", "mistral"),
    ("ministral", "mistral"),
    ("devstral", "mistral"),
    ("magistral", "mistral"),
    ("codestral", "mistral"),
    ("gemma", "gemma"),
    ("qwen", "hermes"),
    ("qwq", "hermes"),
    ("hermes", "hermes"),
    ("smollm", "hermes"),
    ("llama-4", "pythonic"),
    ("llama4", "pythonic"),
    ("llama-3", "llama3"),
    ("llama3", "llama3"),
)

# GGUF general.architecture values that settle the family
_ARCHITECTURES: dict[str, str] = {
    "gpt-oss": "harmony",
    "gptoss": "harmony",
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3n": "gemma",
    "deepseek2": "deepseek",
    "granite": "granite",
    "granitemoe": "granite",
    "granitehybrid": "granite",
    "llama4": "pythonic",
}


def _by_name(name: str | None) -> str | None:
    low = (name or "").lower()
    norm = re.sub(r"[\s_]+", "-", low)
    for hint, family in _NAME_HINTS:
        if hint in low or hint in norm:
            return family
    return None


def guess_tool_parser(
    model_name: str,
    chat_template: str | None = None,
    *,
    gguf_name: str | None = None,
    architecture: str | None = None,
) -> str:
    """The family whose tool-call format a model most likely writes (default "generic").

    The chat template's markers decide first; then the model's name, then the GGUF's
    ``general.name`` and ``general.architecture``.
    """
    if chat_template:
        for test, family in _TEMPLATE_MARKERS:
            if test(chat_template):
                return family
    for name in (model_name, gguf_name):
        family = _by_name(name)
        if family is not None:
            return family
    return _ARCHITECTURES.get((architecture or "").strip().lower(), "generic")
