"""Tool-call arguments coerced to the tool's JSON Schema.

Models write ``"42"`` for an integer, ``"true"`` for a boolean, or an object as a JSON
string; formats such as Qwen3-Coder's XML only have text. Given the request's tools,
a string value becomes an integer, a number, a boolean, null, an object or an array
when the property's schema asks for that type (and not for a string) and the text
reads as one. Anything else is left as it is; nothing here raises.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

_INT_RE = re.compile(r"[-+]?\d+\Z")
_FLOAT_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\Z")
_SCALARS = ("integer", "number", "boolean", "null")
_DEPTH = 32  # schemas nested deeper than this are not followed


def _types(schema: Any) -> list[str]:
    """The JSON types a schema allows, in its order ([] = any)."""
    if not isinstance(schema, dict):
        return []
    t = schema.get("type")
    if isinstance(t, str):
        return [t]
    if isinstance(t, list):
        return [x for x in t if isinstance(x, str)]
    out: list[str] = []
    for key in ("anyOf", "oneOf"):
        for sub in schema.get(key) or []:
            sub_types = _types(sub)
            if not sub_types:
                return []
            out += [x for x in sub_types if x not in out]
    if not out and "enum" in schema and isinstance(schema["enum"], list):
        for v in schema["enum"]:
            name = _type_of(v)
            if name not in out:
                out.append(name)
    return out


def _type_of(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


def _from_string(text: str, types: list[str]) -> Any:
    """``text`` read as one of ``types`` (not "string"), or the text itself."""
    s = text.strip()
    for t in types:
        if t == "integer" and _INT_RE.match(s):
            return int(s)
        if t == "number" and _FLOAT_RE.match(s):
            if _INT_RE.match(s):
                return int(s)
            f = float(s)
            if f == f and f not in (float("inf"), float("-inf")):
                return f
        if t == "boolean" and s.lower() in ("true", "false"):
            return s.lower() == "true"
        if t == "null" and s.lower() in ("null", "none"):
            return None
        if t in ("object", "array") and s[:1] in "{[":
            try:
                v = json.loads(s)
            except (ValueError, RecursionError):
                continue
            if isinstance(v, dict if t == "object" else list):
                return v
    return text


def coerce_value(value: Any, schema: Any, depth: int = 0) -> Any:
    """``value`` made to fit ``schema`` where a string stands for another type."""
    if depth > _DEPTH or not isinstance(schema, dict):
        return value
    types = _types(schema)
    if isinstance(value, str):
        if not types or "string" in types:
            return value
        value = _from_string(value, types)
        if isinstance(value, str):
            return value
    if isinstance(value, dict):
        props = schema.get("properties")
        if isinstance(props, dict):
            return {k: coerce_value(v, props.get(k), depth + 1) for k, v in value.items()}
        return value
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            return [coerce_value(v, items, depth + 1) for v in value]
    return value


def _may_change(schema: Any, depth: int = 0) -> bool:
    """Whether some string value under ``schema`` could be coerced."""
    if depth > _DEPTH or not isinstance(schema, dict):
        return False
    types = _types(schema)
    if types and "string" not in types:
        return True
    props = schema.get("properties")
    if isinstance(props, dict) and any(_may_change(s, depth + 1) for s in props.values()):
        return True
    items = schema.get("items")
    return isinstance(items, dict) and _may_change(items, depth + 1)


def _args_may_change(schema: dict[str, Any]) -> bool:
    props = schema.get("properties")
    return isinstance(props, dict) and any(_may_change(s) for s in props.values())


class Coercer:
    """The parameters schemas of a request's tools, by function name."""

    def __init__(self, tools: Iterable[dict[str, Any]]) -> None:
        self.schemas: dict[str, dict[str, Any]] = {}
        for tool in tools:
            fn = tool.get("function", tool) if isinstance(tool, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                continue
            params = fn.get("parameters")
            self.schemas[fn["name"]] = params if isinstance(params, dict) else {}
        self._needs = {name: _args_may_change(s) for name, s in self.schemas.items()}

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.schemas)

    def needs(self, name: str) -> bool:
        """Whether a call to ``name`` may have its arguments changed (then a stream sends
        them once they are complete, so the pieces add up to the final text)."""
        return self._needs.get(name, False)

    def param(self, name: str, key: str, raw: str) -> Any:
        """A parameter value given as raw text (Qwen3-Coder's XML), read by its schema."""
        props = self.schemas.get(name, {}).get("properties")
        schema = props.get(key) if isinstance(props, dict) else None
        return coerce_value(raw, schema)

    def arguments(self, name: str, text: str) -> str:
        """JSON arguments text coerced; the same text when nothing changes."""
        if not self._needs.get(name):
            return text
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return text
        if not isinstance(value, dict):
            return text
        new = coerce_value(value, self.schemas[name])
        if new == value and _same_types(new, value):
            return text
        return json.dumps(new, ensure_ascii=False)


def _same_types(a: Any, b: Any) -> bool:
    """``a == b`` also holds for 1 == 1.0 == True: compare the types too."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return all(_same_types(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return all(_same_types(x, y) for x, y in zip(a, b, strict=True))
    return True
