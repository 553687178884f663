"""Limits on everything a client controls, and the checks that keep a hostile body from costing more than them.

:class:`Limits` holds the request-limit settings (``max_body_bytes`` ... in kronk/settings.py), built once from
Settings by the app's creator and kept in ``app.state.limits``. The body's size and nesting are checked while it is
read (kronk/api/http.py: read_json); the request's fields are checked by its pydantic validators, which find the
limits in pydantic's validation context (``schema.model_validate(body, context={"limits": limits})``) and fall back
to the defaults when validated without one. docs/limits.md lists every limit and what a request over it gets.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from typing import Any

from pydantic import ValidationInfo

from kronk.errors import ContextLengthExceeded
from kronk.settings import Settings

# The names a chat template is rendered with (kronk/engine/chat.py: ChatTemplate.render and its Jinja globals,
# and Jinja's own globals): chat_template_kwargs may not replace them.
RESERVED_TEMPLATE_KWARGS = frozenset({
    "messages", "tools", "add_generation_prompt", "bos_token", "eos_token",
    "raise_exception", "strftime_now", "range", "dict", "lipsum", "cycler", "joiner", "namespace",
})

# JSON Schema keywords whose count becomes a repetition in the grammar (kronk/engine/grammar.py), and those whose
# values are data, not schemas (not searched for them).
REPEAT_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties", "minContains",
                   "maxContains")
DATA_KEYWORDS = ("enum", "const", "default", "examples", "example")
_QUANTIFIER = re.compile(r"\{(\d*)(?:,(\d*))?\}")

# Python refuses to convert integers longer than this (sys.get_int_max_str_digits()): JSON's are limited by it.
INT_MAX_DIGITS = 4300


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class Limits:
    """The request limits in force (defaults: Settings' defaults)."""

    max_body_bytes: int = _default("max_body_bytes")
    max_json_depth: int = _default("max_json_depth")
    max_messages: int = _default("max_messages")
    max_stop: int = _default("max_stop")
    max_stop_length: int = _default("max_stop_length")
    max_logit_bias: int = _default("max_logit_bias")
    max_schema_bytes: int = _default("max_schema_bytes")
    max_schema_depth: int = _default("max_schema_depth")
    max_schema_repeat: int = _default("max_schema_repeat")
    max_schema_repeat_total: int = _default("max_schema_repeat_total")
    max_tools: int = _default("max_tools")
    max_embedding_inputs: int = _default("max_embedding_inputs")
    max_embedding_tokens: int = _default("max_embedding_tokens")
    max_model_name_length: int = _default("max_model_name_length")
    responses_max_stored: int = _default("responses_max_stored")  # the Responses API's store (its bounds)
    responses_ttl_s: float = _default("responses_ttl_s")
    responses_max_bytes: int = _default("responses_max_bytes")

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


DEFAULT_LIMITS = Limits()


def limits_of(info: ValidationInfo | None) -> Limits:
    """The limits a validator runs under: the validation context's, else the defaults."""
    ctx = info.context if info is not None else None
    lim = ctx.get("limits") if isinstance(ctx, dict) else None
    return lim if isinstance(lim, Limits) else DEFAULT_LIMITS


def nesting_depth(value: Any, cap: int) -> int:
    """How deeply objects and arrays nest in ``value`` (a scalar: 0), counted to ``cap + 1`` at most (iterative:
    no recursion, whatever the depth)."""
    depth, level = 0, [value] if isinstance(value, (dict, list)) else []
    while level and depth <= cap:
        depth += 1
        below: list[Any] = []
        for v in level:
            items = v.values() if isinstance(v, dict) else v
            below.extend(x for x in items if isinstance(x, (dict, list)))
        level = below
    return depth


def check_schema(schema: Any, limits: Limits) -> int:
    """A JSON schema within ``max_schema_depth``, ``max_schema_bytes``, ``max_schema_repeat`` and
    ``max_schema_repeat_total`` (else ValueError: a 400 naming the limit); returns its repetition total."""
    if schema is None:
        return 0
    depth = nesting_depth(schema, limits.max_schema_depth)
    if depth > limits.max_schema_depth:
        raise ValueError(f"the schema nests objects and arrays more than {limits.max_schema_depth} levels deep "
                         f"(the server's max_schema_depth)")
    size = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"))
    if size > limits.max_schema_bytes:
        raise ValueError(f"the schema is {size} bytes of JSON; at most {limits.max_schema_bytes} are allowed "
                         f"(the server's max_schema_bytes)")
    total = schema_repeats(schema, limits.max_schema_repeat)
    check_repeat_total(total, limits)
    return total


def check_repeat_total(total: int, limits: Limits, what: str = "the schema's") -> None:
    if total > limits.max_schema_repeat_total:
        raise ValueError(f"{what} repetition counts add up to {total}; at most {limits.max_schema_repeat_total} "
                         f"are allowed (the server's max_schema_repeat_total)")


def schema_repeats(schema: Any, limit: int) -> int:
    """The sum of the repetition counts in ``schema`` (REPEAT_KEYWORDS, the numbers of a pattern's ``{m,n}``),
    each at most ``limit`` (else ValueError). The grammar holds every repetition written out (its size, and the
    time llama.cpp takes to parse it, grow with the sum: a 64 KiB schema of maxLength 1000 strings made a 10 MB
    grammar that took 7 s and 900 MB), and llama.cpp's grammar parser refuses a nesting of more than about a
    thousand optional repetitions (maxLength 1100) and crashes the process far beyond (maxLength 20000; measured
    with llama-cpp-python 0.3.x). Iterative: no recursion, whatever the nesting."""
    total, todo = 0, [schema]
    while todo:
        node = todo.pop()
        if isinstance(node, list):
            todo.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        for key, v in node.items():
            if key in DATA_KEYWORDS:
                continue
            if key in REPEAT_KEYWORDS and type(v) is int and v > 0:
                if v > limit:
                    raise ValueError(f"{key} is {v}; at most {limit} is allowed (the server's max_schema_repeat)")
                total += v
            elif key == "pattern" and isinstance(v, str):
                for m in _QUANTIFIER.finditer(v):
                    if any(x and (len(x) > len(str(limit)) or int(x) > limit) for x in m.groups()):
                        raise ValueError(f"the pattern's quantifier {m.group(0)[:40]} repeats more than {limit} "
                                         f"times (the server's max_schema_repeat)")
                    total += sum(int(x) for x in m.groups() if x)
            elif isinstance(v, (dict, list)):
                todo.append(v)
    return total


def check_count(v: Any, limit: int, what: str, setting: str) -> None:
    """At most ``limit`` entries in a list or object (else ValueError: a 400 naming the limit)."""
    if isinstance(v, (list, dict)) and len(v) > limit:
        raise ValueError(f"at most {limit} {what} are allowed, got {len(v)} (the server's {setting})")


def check_stop(v: Any, limits: Limits) -> None:
    """Stop sequences (one string or a list) within ``max_stop`` and ``max_stop_length`` (else ValueError)."""
    items = [v] if isinstance(v, str) else v
    check_count(items, limits.max_stop, "stop sequences", "max_stop")
    longest = max((len(s) for s in items if isinstance(s, str)), default=0) if isinstance(items, list) else 0
    if longest > limits.max_stop_length:
        raise ValueError(f"a stop sequence has at most {limits.max_stop_length} characters, got {longest} "
                         f"(the server's max_stop_length)")


def check_model_name(v: str, limits: Limits) -> None:
    if len(v) > limits.max_model_name_length:
        raise ValueError(f"a model name has at most {limits.max_model_name_length} characters, got {len(v)} "
                         f"(the server's max_model_name_length)")


def lone_surrogate_path(value: Any, path: tuple[str, ...] = ()) -> str | None:
    """The dotted path of the first string (or object key) in ``value`` that holds a lone UTF-16 surrogate,
    which no UTF-8 text can carry (None: none). ``value``'s nesting is already bounded (read_json)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return ".".join(path) or "body"
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            found = lone_surrogate_path(k, (*path, "<key>")) or lone_surrogate_path(v, (*path, str(k)))
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = lone_surrogate_path(v, (*path, str(i)))
            if found:
                return found
    return None


def check_completion_fits(n_prompt: int, n_ctx: int, limit: int | None, param: str, prompt_part: str) -> None:
    """A token limit (``max_tokens`` / ``max_completion_tokens``) that the context cannot hold after the prompt is
    a 400, as OpenAI answers it (``context_length_exceeded``, the field as ``param``); no limit at all means the
    rest of the context."""
    if limit is not None and n_ctx and n_prompt + limit > n_ctx:
        raise ContextLengthExceeded(n_prompt, n_ctx, param=param, n_completion=limit, prompt_part=prompt_part)
