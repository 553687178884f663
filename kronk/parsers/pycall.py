"""Tool calls written as Python: ``get_weather(city="Paris")``, ``[f(a=1), g(b=2)]``.

Gemma 3 (in a ```` ```tool_code ```` block or a bare list), Llama 3.2 / 4 ("pythonic")
and Llama 3's built-in tools (``brave_search.call(query="...")``) write calls as
Python. Only keyword arguments with literal values are read (``true``/``false``/
``null`` are accepted too); anything else is not a call. :class:`PyScan` finds where
such text ends in a growing buffer, and :func:`cut_calls` reads the calls of a text
that was cut off.
"""

from __future__ import annotations

import ast
import json

Calls = list[tuple[str, str]]

_CLOSE = {"(": ")", "[": "]", "{": "}"}
_JSON_NAMES = {"true": True, "false": False, "null": None, "none": None}
_CUT_TRIES = 16  # prefixes tried when reading a cut-off text


class _JsonNames(ast.NodeTransformer):
    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id.lower() in _JSON_NAMES:
            return ast.copy_location(ast.Constant(_JSON_NAMES[node.id.lower()]), node)
        return node


def _name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        if func.attr == "call" and isinstance(func.value, ast.Name):  # Llama 3: brave_search.call(...)
            return func.value.id
        return func.attr  # default_api.get_weather / functions.get_weather
    return None


def _call(node: ast.expr) -> tuple[str, str] | None:
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "print"
        and len(node.args) == 1
        and not node.keywords
    ):
        node = node.args[0]
    if not isinstance(node, ast.Call) or node.args:
        return None
    name = _name(node.func)
    if not name:
        return None
    args: dict[str, object] = {}
    for kw in node.keywords:
        if kw.arg is None:
            return None
        try:
            args[kw.arg] = ast.literal_eval(_JsonNames().visit(kw.value))
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            return None
    try:
        return name, json.dumps(args, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return None


def calls_from_source(src: str) -> Calls | None:
    """The calls a piece of Python holds: one call, a list of calls, or one call (or list)
    per line; ``print(call)`` is unwrapped. None if it holds anything else."""
    try:
        tree = ast.parse(src.strip(), mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    nodes: list[ast.expr] = []
    for stmt in tree.body:
        if not isinstance(stmt, ast.Expr):
            return None
        v = stmt.value
        nodes += v.elts if isinstance(v, (ast.List, ast.Tuple)) else [v]
    calls: Calls = []
    for node in nodes:
        call = _call(node)
        if call is None:
            return None
        calls.append(call)
    return calls or None


_Node = tuple[str, "_Node"] | None


def _closers(node: _Node) -> str:
    out: list[str] = []
    while node is not None:
        out.append(_CLOSE[node[0]])
        node = node[1]
    return "".join(out)


class PyScan:
    """Scans Python text in a growing buffer: brackets and strings, and the points where a
    cut-off text can be closed (after ``(``, ``[``, ``{`` or ``,``) to read what it holds."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.pos = start
        self.stack: list[str] = []
        self.quote = ""  # the open string's quote ('"', "'", '\"\"\"' or "'''")
        self.escape = False
        self.safe: list[tuple[int, _Node]] = []  # (end of a prefix, the open brackets there)
        self._top: _Node = None  # the open brackets as a linked list: snapshots cost nothing

    def run(self, buf: str, until: str | None = None, final: bool = False) -> int:
        """Scan on. With ``until`` (e.g. a closing fence): where it starts outside strings;
        else where the bracket opened first closes (its end). -1: not yet; -2: unbalanced."""
        i, n = self.pos, len(buf)
        stack = self.stack
        while i < n:
            c = buf[i]
            if self.quote:
                if self.escape:
                    self.escape = False
                elif c == "\\":
                    self.escape = True
                elif buf.startswith(self.quote, i):
                    i += len(self.quote)
                    self.quote = ""
                    continue
                elif len(self.quote) == 1 and c == "\n":
                    self.quote = ""  # an unterminated one-line string: let ast reject it
                i += 1
                continue
            if until is not None and c == until[0]:
                if buf.startswith(until, i):
                    self.pos = i
                    return i
                if not final and until.startswith(buf[i:]):
                    break  # may still become the end marker: wait for more
            if c in "\"'":
                if buf.startswith(c * 3, i):
                    self.quote = c * 3
                    i += 3
                    continue
                if not final and n - i < 3 and buf[i:] == c * (n - i):
                    break  # may still become a triple quote: wait for more
                self.quote = c
            elif c in _CLOSE:
                stack.append(c)
                self._top = (c, self._top)
                self.safe.append((i + 1, self._top))
            elif c in ")]}":
                if not stack or _CLOSE[stack[-1]] != c:
                    self.pos = i
                    return -2  # unbalanced: not Python we can read
                stack.pop()
                self._top = self._top[1] if self._top is not None else None
                if not stack and until is None:
                    self.pos = i + 1
                    return i + 1
            elif c == ",":
                self.safe.append((i, self._top))
            i += 1
        self.pos = i
        return -1

    def closers(self) -> str | None:
        """What closes the text scanned so far (None right after a backslash in a string)."""
        if self.escape:
            return None
        return self.quote + _closers(self._top)


def cut_calls(buf: str, scan: PyScan, end: int | None = None) -> Calls:
    """The calls a cut-off Python text holds, as far as it can be closed: the longest
    prefix (whole, or up to a ``(`` or ``,``) that reads as calls once its brackets close."""
    end = len(buf) if end is None else end
    tries: list[tuple[int, str]] = []
    closers = scan.closers()
    if closers is not None:
        tries.append((end, closers))
    tries += [(p, _closers(node)) for p, node in reversed(scan.safe[-4 * _CUT_TRIES :]) if p <= end][:_CUT_TRIES]
    for p, close in tries:
        src = buf[scan.start : p].rstrip()
        calls = calls_from_source(src.removesuffix(",") + close)
        if calls:
            return calls
    return []
