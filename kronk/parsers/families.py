"""The tool-call formats of the model families people run, and choosing one for a model."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable

from kronk.parsers.base import Family, Opener, ToolParser
from kronk.parsers.jsonscan import calls_from_value
from kronk.parsers.reader import (
    NEED,
    Calls,
    Cursor,
    Fail,
    Gen,
    is_object,
    json_value,
    no_calls,
    optional_marker,
    peek,
    read_name,
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


def _bare_json(cur: Cursor) -> Gen[Calls | None]:
    """A JSON value with no marker: a call only if it has a name and an arguments key."""
    scan = yield from json_value(cur)
    return calls_from_value(scan, cur.buf, require_args=True, allowed_names=cur.allowed)


def _fenced_json(cur: Cursor) -> Gen[Calls | None]:
    """A fenced block (after the opening backticks) holding a call as JSON."""
    lang = yield from read_word(cur)
    if lang.lower() not in _FENCE_LANGS:
        raise Fail(cur.pos)
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
        return calls_from_value(scan, cur.buf)
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


# -- families --------------------------------------------------------------------------

_HERMES = (Opener("<tool_call>", _hermes),)

_FAMILIES: dict[str, tuple[tuple[Opener, ...], str]] = {
    "hermes": (_HERMES, ""),
    "llama3": (
        (
            Opener("<|python_tag|>", _python_tag),
            Opener("{", _bare_json, leading=True, consume=False),
            Opener("[", _bare_json, leading=True, consume=False),
        ),
        ";",
    ),
    "mistral": ((Opener("[TOOL_CALLS]", _mistral),), ""),
    "granite": ((Opener("<|tool_call|>", _json_calls),), ""),
    "phi4": ((Opener("functools", _json_calls),), ""),
    "deepseek": (
        (
            Opener(DS_CALLS_BEGIN, no_calls),
            Opener(DS_CALL_BEGIN, _deepseek_call),
            Opener(DS_CALLS_END, no_calls),
        ),
        "",
    ),
    "generic": (
        (
            *_HERMES,
            Opener("```", _fenced_json, eager=False),
            Opener("{", _bare_json, consume=False, eager=False),
            Opener("[", _bare_json, consume=False, eager=False),
        ),
        ",;",
    ),
}

TOOL_PARSERS: tuple[str, ...] = tuple(_FAMILIES)


def get_tool_parser(name: str, tool_names: Iterable[str] | None = None) -> ToolParser:
    """The tool-call parser for a family (one of ``TOOL_PARSERS``).

    ``tool_names``: the request's function names; given, a call written as bare JSON
    (generic, Llama 3) counts only if it names one of them, so ordinary JSON answers
    stay content.
    """
    key = name.strip().lower()
    if key not in _FAMILIES:
        raise ValueError(f"unknown tool parser {name!r}; known: {', '.join(TOOL_PARSERS)}")
    openers, separators = _FAMILIES[key]
    allowed = frozenset(tool_names) if tool_names is not None else None
    return ToolParser(Family(key, openers, separators, allowed))


# (marker in a chat template, family), checked in this order
_TEMPLATE_MARKERS: tuple[tuple[str, str], ...] = (
    ("tool\u2581calls\u2581begin", "deepseek"),
    ("[TOOL_CALLS]", "mistral"),
    ("<|tool_call|>", "granite"),
    ("functools", "phi4"),
    ("<tool_call>", "hermes"),
    ("<|python_tag|>", "llama3"),
)

# (substring of a lower-cased model name, family), checked in this order
_NAME_HINTS: tuple[tuple[str, str], ...] = (
    ("deepseek", "deepseek"),
    ("granite", "granite"),
    ("phi-4", "phi4"),
    ("phi4", "phi4"),
    ("mistral", "mistral"),
    ("mixtral", "mistral"),
    ("ministral", "mistral"),
    ("devstral", "mistral"),
    ("magistral", "mistral"),
    ("codestral", "mistral"),
    ("qwen", "hermes"),
    ("qwq", "hermes"),
    ("hermes", "hermes"),
    ("smollm", "hermes"),
    ("llama-3", "llama3"),
    ("llama3", "llama3"),
    ("llama_3", "llama3"),
)


def guess_tool_parser(model_name: str, chat_template: str | None = None) -> str:
    """The family whose tool-call format a model most likely writes (default "generic").

    The chat template's markers decide first; then the model's name.
    """
    if chat_template:
        for marker, family in _TEMPLATE_MARKERS:
            if marker in chat_template:
                return family
    name = (model_name or "").lower()
    for hint, family in _NAME_HINTS:
        if hint in name:
            return family
    return "generic"
