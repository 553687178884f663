"""The prompt side of tools: describing them to a model whose template can't, and
the JSON Schema a forced tool call must match.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jinja2
from jinja2 import meta

ToolChoice = str | dict[str, Any] | None

_TOOLS_REF = re.compile(r"\{[{%][^}]*\btools\b")


def template_supports_tools(jinja_source: str | None) -> bool:
    """Whether a chat template renders the ``tools`` it is given."""
    if not jinja_source:
        return False
    env = jinja2.Environment(extensions=["jinja2.ext.loopcontrols", "jinja2.ext.do"])
    try:
        names = meta.find_undeclared_variables(env.parse(jinja_source))
    except jinja2.TemplateSyntaxError:
        return bool(_TOOLS_REF.search(jinja_source))
    return "tools" in names


def _function(tool: dict[str, Any]) -> dict[str, Any]:
    """The function part of an OpenAI tool (``{"type": "function", "function": {...}}``)."""
    fn = tool.get("function", tool)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ValueError("each tool needs a function with a name")
    return fn


def _parameters(fn: dict[str, Any]) -> dict[str, Any]:
    params = fn.get("parameters")
    if not isinstance(params, dict) or not params:
        return {"type": "object", "properties": {}}
    return params


def chosen_function(tool_choice: ToolChoice) -> str | None:
    """The function a ``tool_choice`` names (``{"type": "function", "function": {"name": ...}}``)."""
    if isinstance(tool_choice, dict):
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else tool_choice.get("name")
        if isinstance(name, str) and name:
            return name
        raise ValueError("tool_choice must name a function: {'type': 'function', 'function': {'name': ...}}")
    return None


def _check_choice(tools: list[dict[str, Any]], tool_choice: ToolChoice) -> str | None:
    """The forced function's name (or None); ValueError for a choice the tools can't meet."""
    if tool_choice is None or tool_choice in ("auto", "none", "required"):
        name = None
    elif isinstance(tool_choice, str):
        raise ValueError(f"tool_choice must be 'none', 'auto', 'required' or a function, not {tool_choice!r}")
    else:
        name = chosen_function(tool_choice)
    names = [_function(t)["name"] for t in tools]
    if name is not None and name not in names:
        raise ValueError(f"tool_choice names function {name!r}, which is not among the tools")
    if tool_choice == "required" and not names:
        raise ValueError("tool_choice 'required' needs at least one tool")
    return name


def render_tools_system_prompt(tools: list[dict[str, Any]], tool_choice: ToolChoice = "auto") -> str:
    """A system-prompt text that lists the functions and the exact format to call them in.

    For chat templates that ignore ``tools`` (Gemma's turn format, plain ChatML). The
    format it asks for is what the "generic" parser reads. Empty for no tools or
    ``tool_choice="none"``. Kept compact: clients such as OpenWebUI send dozens of tools.
    """
    forced = _check_choice(tools, tool_choice)
    if not tools or tool_choice == "none":
        return ""
    lines = ["You can call these functions:"]
    for tool in tools:
        fn = _function(tool)
        params = json.dumps(_parameters(fn), ensure_ascii=False, separators=(",", ":"))
        desc = " ".join(str(fn.get("description") or "").split())
        lines.append(f"- {fn['name']}: {desc}" if desc else f"- {fn['name']}")
        lines.append(f"  parameters (JSON Schema): {params}")
    lines.append("")
    lines.append(
        "To call a function, reply with only a JSON object, and nothing before or after it:\n"
        '{"name": "<function name>", "arguments": {<argument name>: <value>, ...}}\n'
        "To call several functions at once, reply with a JSON array of such objects."
    )
    if forced is not None:
        lines.append(f"You must call the function {forced} now.")
    elif tool_choice == "required":
        lines.append("You must call at least one of these functions now.")
    else:
        lines.append(
            "Call a function only when it helps to answer; otherwise answer normally, in plain text. "
            "After a function's result arrives, use it to answer."
        )
    return "\n".join(lines)


def _call_schema(fn: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": fn["name"]}, "arguments": _parameters(fn)},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def tool_call_grammar_schema(
    tools: list[dict[str, Any]], tool_choice: ToolChoice, parallel: bool = False
) -> dict[str, Any] | None:
    """The JSON Schema a reply must match when ``tool_choice`` forces a call, else None.

    ``"required"``: a call of any of the tools; a named function: a call of that one.
    Each call is ``{"name": <const>, "arguments": <the function's parameters schema>}``;
    with ``parallel`` the reply is a non-empty array of calls. A reply constrained by
    it is bare JSON: read it with the "generic" parser.
    """
    forced = _check_choice(tools, tool_choice)
    if forced is None and tool_choice != "required":
        return None
    fns = [_function(t) for t in tools]
    if forced is not None:
        fns = [fn for fn in fns if fn["name"] == forced][:1]
    options = [_call_schema(fn) for fn in fns]
    call = options[0] if len(options) == 1 else {"anyOf": options}
    if parallel:
        return {"type": "array", "items": call, "minItems": 1}
    return call
