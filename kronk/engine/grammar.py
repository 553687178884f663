"""GBNF grammars for JSON output (llama.cpp's grammar sampler enforces them)."""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from kronk.errors import InvalidRequest


def json_object_grammar() -> str:
    """Any JSON object (OpenAI's ``response_format: {"type": "json_object"}``)."""
    # llama-cpp-python's JSON grammar accepts any JSON value at the root; pin it to an object.
    return JSON_GBNF.replace("root   ::= object", "root ::= object", 1) if "root   ::= object" in JSON_GBNF \
        else json_schema_to_gbnf(json.dumps({"type": "object"}))


def json_schema_grammar(schema: dict[str, Any], param: str = "response_format") -> str:
    """A grammar for documents matching a JSON Schema."""
    if not isinstance(schema, dict):
        raise InvalidRequest("the JSON schema must be an object", param=param)
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as e:  # the converter raises assorted errors for schemas it cannot express
        raise InvalidRequest(f"the JSON schema cannot be turned into a grammar: {e}", param=param) from e
