"""JSON modes (``response_format`` json_object / json_schema) in one process (real model, in-process backend,
real HTTP): what they guarantee on any CPU, not what a tiny model happens to write on one."""

from __future__ import annotations

import json

import jsonschema

from tests.helpers import SMOL


def ends_in_a_loop(content: str) -> bool:
    """What the repetition guard ends, seen in the text: a tail that is one piece four times, or blanks.

    (A cycle of p tokens trips it once it covers max(64, 4p) tokens, at least 4 copies; a run of
    whitespace tokens at 32 of them.)"""
    b = content.encode()
    return len(b) - len(b.rstrip()) >= 32 or any(b[-4 * q:] == b[-q:] * 4 for q in range(1, len(b) // 4 + 1))


def test_json_mode_output_parses(client):
    # What JSON mode guarantees on any CPU (greedy output of a tiny model changes with the CPU's kernels):
    # an answer that ends by itself is a JSON object; one cut short ("length") used exactly max_tokens,
    # or fewer only when the repetition guard ended a loop.
    r = client.chat.completions.create(
        model=SMOL, temperature=0, seed=0, max_tokens=200, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Describe a person with a name and an age as JSON."}])
    choice, used = r.choices[0], r.usage.completion_tokens
    content = choice.message.content
    assert choice.finish_reason in ("stop", "length"), choice.finish_reason
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(content), dict), content
        assert used <= 200
    else:
        assert used == 200 or (32 <= used < 200 and ends_in_a_loop(content)), (used, content)
        assert content.lstrip().startswith("{")


def json_budget(skeleton: dict, string_chars: int) -> int:
    """The most tokens a document matching a bounded schema can take.

    The grammar refuses empty pieces, so every token adds at least one byte; a string character is at
    most 6 tokens (an escape such as \\u00e9, or the bytes of a character one by one); the rest is the
    document's skeleton with at most one optional blank after each of its characters."""
    return 6 * string_chars + 2 * len(json.dumps(skeleton))


def test_json_schema_output_validates(client):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                               "country": {"type": "string", "maxLength": 10}},
              "required": ["city", "country"], "additionalProperties": False}
    budget = json_budget({"city": "", "country": ""}, 10 + 10)
    r = client.chat.completions.create(
        model=SMOL, temperature=0, seed=0, max_tokens=budget,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
        messages=[{"role": "user", "content": "Name a city and its country."}])
    # the document cannot outgrow the budget, and its strings (at most 60 tokens) cannot hold a loop
    # the repetition guard would end (64 tokens at least): it must end by itself and validate
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens <= budget
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_json_schema_with_bounded_strings_and_items_always_ends_and_validates(client):
    schema = {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 10},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 1, "maxItems": 3},
        "age": {"type": "integer"}},
        "required": ["name", "hobbies", "age"], "additionalProperties": False}
    budget = json_budget({"name": "", "hobbies": ["", "", ""], "age": -10 ** 15}, 10 + 3 * 8)  # 16 digits at most
    assert budget < 400
    r = client.chat.completions.create(
        model=SMOL, temperature=0, seed=0, max_tokens=budget,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
        messages=[{"role": "user", "content": "Describe a person with a name, an age and hobbies as JSON."}])
    # a name of at most 60 tokens, at most 3 items of at most 48 each: no cycle of 4 copies or of 64
    # tokens fits, so only the document's own end can finish it, within the budget
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens <= budget
    doc = json.loads(r.choices[0].message.content)
    jsonschema.validate(doc, schema)
    assert 1 <= len(doc["hobbies"]) <= 3
