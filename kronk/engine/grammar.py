"""GBNF grammars for JSON output (llama.cpp's grammar sampler enforces them).

Every repetition in these grammars that is not part of the content is bounded, so a
model cannot pad a document forever: whitespace between tokens is at most a newline
and 20 blanks (``ws``; the schema converter's ``space`` is one optional blank), and
numbers have at most 16 digits in each part. What stays unbounded is content: the
characters of a string (unless a schema gives ``maxLength``), the items of an array
(``maxItems``) and the members of an object. A model that loops there is ended by the
engine's repetition guard (kronk/engine/repetition.py), or, at the latest, by its
context.

Raw control characters (a newline, a tab) are invalid inside JSON strings, so neither
grammar allows them there: the documents parse with a strict JSON parser.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kronk.errors import InvalidRequest

# Any JSON object (adapted from llama.cpp's grammars/json.gbnf, which llama-cpp-python ships as
# JSON_GBNF, with the root pinned to an object and the fraction digits bounded like the rest).
JSON_OBJECT_GBNF = r"""
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt] | "u" [0-9a-fA-F]{4}) # escapes
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]{1,16})? ([eE] [-+]? [0-9] [1-9]{0,15})? ws

# Optional whitespace, bounded: nothing, a blank, or a newline and up to 20 blanks of indentation
ws ::= | " " | "\n" [ \t]{0,20}
"""

# The schema converter's string character: any character but '"' and '\', or an escape. JSON
# forbids raw control characters in strings; exclude them as JSON_OBJECT_GBNF does.
_SCHEMA_CHAR = re.compile(r'^char ::= \[\^"\\\\\]', re.MULTILINE)
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F]'


def json_object_grammar() -> str:
    """Any JSON object (OpenAI's ``response_format: {"type": "json_object"}``)."""
    return JSON_OBJECT_GBNF


def json_schema_grammar(schema: dict[str, Any], param: str = "response_format") -> str:
    """A grammar for documents matching a JSON Schema."""
    # imported here: importing llama_cpp loads libllama, which the routing ingress (that imports the API
    # families, this module among them) never needs
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    if not isinstance(schema, dict):
        raise InvalidRequest("the JSON schema must be an object", param=param)
    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
    except Exception as e:  # the converter raises assorted errors for schemas it cannot express
        raise InvalidRequest(f"the JSON schema cannot be turned into a grammar: {e}", param=param) from e
    return _SCHEMA_CHAR.sub(lambda _: _JSON_CHAR, gbnf)
