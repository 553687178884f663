"""Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``) with the official ``anthropic``
SDK on the real small models over real HTTP: plain answers, stop sequences, forced tool use and a tool_result
round trip, the event stream, token counting, and errors in Anthropic's shape (keys on included)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from kronk.api.app import create_app
from kronk.api.limits import Limits
from kronk.api.messages.schemas import MessagesRequest
from kronk.api.messages.serving import Blocks
from kronk.api.wire import wire_for
from kronk.engine.text import StopMatcher
from kronk.errors import KronkError
from kronk.parsers import StreamEvent
from kronk.security.access import Access
from kronk.serving.items import Failure
from kronk.serving.local import LocalBackend
from kronk.settings import Settings
from tests.helpers import GEMMA, SMOL, http_server, openai_client

WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                            "required": ["city"]}}
TIME = {"name": "get_time", "description": "The time in a timezone",
        "input_schema": {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
                         "required": ["zone"]}}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# this SDK has no sampling arguments (temperature, top_p, top_k): they travel as extra fields, as its users send them
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def claude(api_url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=api_url, api_key="x", max_retries=0, timeout=120)


def raw_events(api_url: str, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A streamed answer's events, as (event name, data), from the bytes on the wire."""
    with httpx.stream("POST", api_url + "/v1/messages", json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    out = []
    for chunk in text.split("\n\n"):
        if not chunk.strip():
            continue
        lines = dict(line.split(": ", 1) for line in chunk.split("\n"))
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        out.append((lines["event"], data))
    return out


def check_order(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The stream's events in Anthropic's order: message_start, ping, then each block's start, deltas and stop
    (indexes 0, 1, ...), message_delta, message_stop. Returns the content blocks as started."""
    names = [e[0] for e in events]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"], names
    assert events[0][1]["message"]["content"] == [] and events[0][1]["message"]["usage"]["input_tokens"] > 0
    started, open_index = [], None
    for name, data in events[2:-2]:
        if name == "content_block_start":
            assert open_index is None and data["index"] == len(started)
            open_index = data["index"]
            started.append(data["content_block"])
        elif name == "content_block_delta":
            assert data["index"] == open_index
        else:
            assert name == "content_block_stop" and data["index"] == open_index, name
            open_index = None
    assert open_index is None
    return started


# ---------------------------------------------------------------------- answers


def test_create_answers_as_chat_completions_does(claude, api_url):
    system = "You answer in one short sentence."
    r = claude.messages.create(model=SMOL, max_tokens=12, extra_body=GREEDY, system=system,
                               messages=[{"role": "user", "content": "Name a color."}])
    assert r.type == "message" and r.role == "assistant" and r.model == SMOL and r.id.startswith("msg_")
    assert [b.type for b in r.content] == ["text"] and r.content[0].text.strip()
    assert r.stop_reason in ("end_turn", "max_tokens") and r.stop_sequence is None
    assert r.usage.output_tokens > 0 and r.usage.cache_creation_input_tokens == 0
    # the same conversation as a chat completion: system first, then the user's turn
    c = openai_client(api_url).chat.completions.create(
        model=SMOL, max_tokens=12, extra_body=GREEDY,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": "Name a color."}])
    assert r.content[0].text == c.choices[0].message.content
    assert r.usage.input_tokens + r.usage.cache_read_input_tokens == c.usage.prompt_tokens
    assert r.usage.output_tokens == c.usage.completion_tokens
    assert r.stop_reason == {"stop": "end_turn", "length": "max_tokens"}[c.choices[0].finish_reason]


def test_system_as_text_blocks_and_content_as_blocks(claude):
    plain = claude.messages.create(model=SMOL, max_tokens=12, extra_body=GREEDY, system="Be brief.",
                                   messages=[{"role": "user", "content": "Say hello."}])
    blocks = claude.messages.create(model=SMOL, max_tokens=12, extra_body=GREEDY,
                                    system=[{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
                                    messages=[{"role": "user", "content": [{"type": "text", "text": "Say "},
                                                                           {"type": "text", "text": "hello."}]}],
                                    metadata={"user_id": "u1"})
    assert blocks.content[0].text == plain.content[0].text


def test_stop_sequences_name_the_one_that_ended_the_turn(claude, api_url):
    free = claude.messages.create(model=GEMMA, max_tokens=16, extra_body=GREEDY,
                                  messages=[{"role": "user", "content": "Tell me about the sea."}])
    text = free.content[0].text
    words = [w for w in text.split() if len(w) >= 3]
    assert len(words) >= 2, text
    stop = words[1]
    cut = claude.messages.create(model=GEMMA, max_tokens=16, extra_body=GREEDY, stop_sequences=["@@never@@", stop],
                                 messages=[{"role": "user", "content": "Tell me about the sea."}])
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert "".join(b.text for b in cut.content) == text[: text.index(stop)]
    events = raw_events(api_url, {
        "model": GEMMA, "max_tokens": 16, "temperature": 0, "stop_sequences": [stop],
        "messages": [{"role": "user", "content": "Tell me about the sea."}]})
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": stop}


def test_max_tokens_is_the_stop_reason_of_a_cut_answer(claude):
    r = claude.messages.create(model=GEMMA, max_tokens=3, extra_body=GREEDY,
                               messages=[{"role": "user", "content": "Tell a long story."}])
    assert r.stop_reason == "max_tokens" and r.usage.output_tokens == 3


# ---------------------------------------------------------------------- tools


@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "get_time"}])
def test_forced_tool_use_input_matches_the_schema(claude, choice):
    r = claude.messages.create(model=SMOL, max_tokens=32, extra_body=GREEDY, tools=[WEATHER, TIME],
                               tool_choice=choice, messages=ASK)
    uses = [b for b in r.content if b.type == "tool_use"]
    assert r.stop_reason == "tool_use" and uses, r.content
    schemas = {t["name"]: t["input_schema"] for t in (WEATHER, TIME)}
    for u in uses:
        assert u.id.startswith("toolu_") and isinstance(u.input, dict)
        jsonschema.validate(u.input, schemas[u.name])
    if choice["type"] == "tool":
        assert {u.name for u in uses} == {"get_time"}


def test_tool_result_round_trip(claude):
    first = claude.messages.create(model=SMOL, max_tokens=32, extra_body=GREEDY, tools=[WEATHER],
                                   tool_choice={"type": "tool", "name": "get_weather",
                                                "disable_parallel_tool_use": True}, messages=ASK)
    (use,) = [b for b in first.content if b.type == "tool_use"]

    def turn(result: Any, is_error: bool = False) -> list[dict[str, Any]]:
        return [*ASK, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": result,
                                              "is_error": is_error}]}]

    second = claude.messages.create(model=SMOL, max_tokens=8, extra_body=GREEDY, tools=[WEATHER], messages=turn(
        [{"type": "text", "text": "Sunny, 21 C."}]))
    assert second.stop_reason in ("end_turn", "max_tokens", "tool_use") and second.content
    # the result reaches the prompt: a longer one is more tokens, an error result says so
    short = claude.messages.count_tokens(model=SMOL, tools=[WEATHER], messages=turn("Sunny.")).input_tokens
    longer = claude.messages.count_tokens(model=SMOL, tools=[WEATHER],
                                          messages=turn("Sunny, 21 C, light wind from the west.")).input_tokens
    failed = claude.messages.count_tokens(model=SMOL, tools=[WEATHER], messages=turn("Sunny.", True)).input_tokens
    assert short < longer and short < failed


def test_output_config_format_is_a_structured_answer(claude):
    schema = {"type": "object", "properties": {"color": {"type": "string", "maxLength": 12}}, "required": ["color"],
              "additionalProperties": False}
    r = claude.messages.create(model=SMOL, max_tokens=32, extra_body=GREEDY,
                               output_config={"format": {"type": "json_schema", "schema": schema}},
                               messages=[{"role": "user", "content": "Name a color."}])
    assert r.stop_reason == "end_turn", r
    jsonschema.validate(json.loads(r.content[0].text), schema)


# ---------------------------------------------------------------------- streaming


def test_stream_text_and_final_message(claude, api_url):
    body = {"model": SMOL, "max_tokens": 16, "messages": [{"role": "user", "content": "Name three colors."}]}
    whole = claude.messages.create(**body, extra_body=GREEDY)
    with claude.messages.stream(**body, extra_body=GREEDY) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens
    assert final.id.startswith("msg_") and final.model == SMOL
    events = raw_events(api_url, {**body, **GREEDY})
    started = check_order(events)
    assert started == [{"type": "text", "text": ""}]
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert {d["type"] for d in deltas} == {"text_delta"} and "".join(d["text"] for d in deltas) == text
    assert events[-2][1]["usage"]["output_tokens"] == whole.usage.output_tokens


def test_stream_tool_use_as_input_json_deltas(claude, api_url):
    body = {"model": SMOL, "max_tokens": 32, "tools": [WEATHER], "messages": ASK, "tool_choice": {"type": "any"}}
    whole = claude.messages.create(**body, extra_body=GREEDY)
    with claude.messages.stream(**body, extra_body=GREEDY) as s:
        final = s.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [(b.type, getattr(b, "input", None)) for b in final.content] == \
        [(b.type, getattr(b, "input", None)) for b in whole.content]
    events = raw_events(api_url, {**body, **GREEDY})
    started = check_order(events)
    assert [b["type"] for b in started if b["type"] != "text"] == ["tool_use"] * len(
        [b for b in whole.content if b.type == "tool_use"])
    i = next(k for k, b in enumerate(started) if b["type"] == "tool_use")
    assert started[i]["input"] == {} and started[i]["name"] == "get_weather"
    partial = "".join(d["delta"]["partial_json"] for n, d in events
                      if n == "content_block_delta" and d["index"] == i)
    assert json.loads(partial) == whole.content[i].input
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_blocks_in_order_with_thinking_signed():
    b = Blocks()
    out = []
    for ev in [StreamEvent(reasoning="Let me "), StreamEvent(reasoning="think."), StreamEvent(content="\n\n"),
               StreamEvent(content="Hi"), StreamEvent(content=" there"),
               StreamEvent(tool_call={"index": 0, "id": "call_abc", "type": "function",
                                      "function": {"name": "f", "arguments": ""}}),
               StreamEvent(tool_call={"index": 0, "function": {"arguments": '{"a": '}}),
               StreamEvent(tool_call={"index": 0, "function": {"arguments": "1}"}}), StreamEvent(content="  "),
               StreamEvent(tool_call={"index": 1, "id": "call_def", "type": "function",
                                      "function": {"name": "g", "arguments": "{}"}})]:
        out += b.feed(ev)
    out += b.finish()
    events = [(e.split("\n")[0].removeprefix("event: "), json.loads(e.split("\n")[1].removeprefix("data: ")))
              for e in out]
    check_order([("message_start", {"message": {"content": [], "usage": {"input_tokens": 1}}}), ("ping", {}),
                 *events, ("message_delta", {}), ("message_stop", {})])
    assert [x["type"] for x in b.blocks] == ["thinking", "text", "tool_use", "tool_use"]
    thinking, text, f, g = b.blocks
    assert thinking["thinking"] == "Let me think." and thinking["signature"]
    sig = [d["delta"] for n, d in events if n == "content_block_delta" and d["delta"]["type"] == "signature_delta"]
    assert sig == [{"type": "signature_delta", "signature": thinking["signature"]}]
    assert text["text"] == "\n\nHi there"  # whitespace opening the text block is kept, the lone "  " makes none
    assert f == {"type": "tool_use", "id": "toolu_abc", "name": "f", "input": {"a": 1}}
    assert g["input"] == {} and g["id"] == "toolu_def"


# ---------------------------------------------------------------------- count_tokens


def test_count_tokens_is_the_prompt_of_the_same_request(claude):
    conv = {"model": SMOL, "system": "You are terse.", "messages": ASK, "tools": [WEATHER, TIME],
            "tool_choice": {"type": "any"}}
    counted = claude.messages.count_tokens(**conv).input_tokens
    r = claude.messages.create(max_tokens=8, extra_body=GREEDY, **conv)
    assert counted == r.usage.input_tokens + r.usage.cache_read_input_tokens + r.usage.cache_creation_input_tokens
    plain = {"model": SMOL, "messages": [{"role": "user", "content": "Hello there, how are you?"}]}
    counted = claude.messages.count_tokens(**plain).input_tokens
    r = claude.messages.create(max_tokens=4, extra_body=GREEDY, **plain)
    assert counted == r.usage.input_tokens + r.usage.cache_read_input_tokens
    assert counted < claude.messages.count_tokens(**conv).input_tokens


# ---------------------------------------------------------------------- errors


def anthropic_error(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    return body["error"]


def test_unknown_model_is_not_found_error(claude, api_url):
    with pytest.raises(anthropic.NotFoundError) as e:
        claude.messages.create(model="no-such-model", max_tokens=4, messages=ASK)
    assert e.value.status_code == 404 and e.value.body["error"]["type"] == "not_found_error"
    assert "no-such-model" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.count_tokens(model="no-such-model", messages=ASK)


@pytest.mark.parametrize("extra, words", [
    ({"extra_body": {"temperature": 5}}, "temperature"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "x",
                                                                             "media_type": "image/png"}}]}]},
     "text only"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]}, "text only"),
    ({"messages": [{"role": "system", "content": "x"}]}, "role"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "'video'"),
    ({"tool_choice": {"type": "tool", "name": "nope"}, "tools": [WEATHER]}, "nope"),
    ({"tool_choice": {"type": "any"}}, "no tools"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tool"),
    ({"stop_sequences": ["x"] * 17}, "max_stop"),
    ({"thinking": {"type": "enabled", "budget_tokens": 1024}, "tools": [WEATHER], "tool_choice": {"type": "any"}},
     "thinking"),
])
def test_a_bad_field_is_bad_request_error(claude, extra, words):
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.create(**{"model": SMOL, "max_tokens": 4, "messages": ASK, **extra})
    err = e.value.body["error"]
    assert e.value.status_code == 400 and err["type"] == "invalid_request_error" and words in err["message"], err


def test_missing_max_tokens_and_bad_json_are_400_in_anthropic_shape(api_url):
    r = httpx.post(api_url + "/v1/messages", json={"model": SMOL, "messages": ASK},
                   headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 400 and "max_tokens" in anthropic_error(r)["message"]
    r = httpx.post(api_url + "/v1/messages", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and anthropic_error(r)["type"] == "invalid_request_error"
    r = httpx.post(api_url + "/v1/messages", content=b"x" * 10, headers={"content-type": "text/plain"})
    assert r.status_code == 415 and anthropic_error(r)["type"] == "invalid_request_error"
    # other families keep OpenAI's envelope
    r = httpx.post(api_url + "/v1/chat/completions", json={"model": SMOL})
    assert r.status_code == 400 and "error" in r.json() and "type" not in r.json()


def test_mid_stream_failure_is_an_error_event():
    wire = wire_for("/v1/messages/count_tokens")
    text = wire.stream_error(Failure(503, "server_error", "the replica went away"))
    name, data = text.split("\n")[:2]
    assert name == "event: error" and text.endswith("\n\n")
    assert json.loads(data.removeprefix("data: ")) == {"type": "error", "error": {
        "type": "overloaded_error", "message": "the replica went away"}}
    for status, kind in [(401, "authentication_error"), (403, "permission_error"), (413, "request_too_large"),
                         (429, "rate_limit_error"), (500, "api_error"), (529, "overloaded_error")]:
        assert wire.error_body(Failure(status, "x", "m"))["error"]["type"] == kind


def test_stop_matcher_names_the_stop_string_it_hit():
    m = StopMatcher(["END", "stop", "op"])
    assert m.feed("we st") == ("we ", False) and m.matched is None
    assert m.feed("op here") == ("", True) and m.matched == "stop"


def test_thinking_maps_to_enable_thinking_and_choices_to_openai():
    base = {"model": "m", "max_tokens": 8, "messages": ASK, "tools": [WEATHER]}
    on = MessagesRequest.model_validate({**base, "thinking": {"type": "enabled", "budget_tokens": 2048}})
    assert on.chat.chat_template_kwargs == {"enable_thinking": True}
    off = MessagesRequest.model_validate({**base, "thinking": {"type": "disabled"}})
    assert off.chat.chat_template_kwargs == {"enable_thinking": False}
    for choice, want, parallel in [({"type": "auto"}, "auto", None), ({"type": "none"}, "none", None),
                                   ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
                                   ({"type": "any", "disable_parallel_tool_use": False}, "required", True)]:
        chat = MessagesRequest.model_validate({**base, "tool_choice": choice}).chat
        assert chat.tool_choice == want and chat.parallel_tool_calls is parallel
    named = MessagesRequest.model_validate({**base, "tool_choice": {"type": "tool", "name": "get_weather"}}).chat
    assert named.tool_choice.function == {"name": "get_weather"}
    assert named.tools[0].function.parameters == WEATHER["input_schema"]
    with pytest.raises(KronkError):  # a tool_result in an assistant message
        MessagesRequest.model_validate({**base, "messages": [{"role": "assistant", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": "x"}]}]})


# ---------------------------------------------------------------------- keys


@pytest.fixture(scope="module")
def keyed_url(services, tmp_path_factory) -> Any:
    home: Path = tmp_path_factory.mktemp("kronk-keyed")
    settings = Settings(home=home)
    app = create_app(LocalBackend.of_services(services, settings), access=Access(home=home, api_keys=["s3cret"]),
                     limits=Limits.from_settings(settings))
    with http_server(app) as url:
        yield url


def test_keys_on_wrong_key_is_authentication_error_and_x_api_key_works(keyed_url):
    wrong = anthropic.Anthropic(base_url=keyed_url, api_key="nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        wrong.messages.create(model=SMOL, max_tokens=2, messages=ASK)
    assert e.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.AuthenticationError):
        wrong.messages.count_tokens(model=SMOL, messages=ASK)
    right = anthropic.Anthropic(base_url=keyed_url, api_key="s3cret", max_retries=0)  # sends x-api-key
    assert right.messages.count_tokens(model=SMOL, messages=ASK).input_tokens > 0
    r = httpx.post(keyed_url + "/v1/messages", json={"model": SMOL, "max_tokens": 2, "messages": ASK})
    assert r.status_code == 401 and anthropic_error(r)["type"] == "authentication_error"
    r = httpx.post(keyed_url + "/v1/messages/count_tokens", json={"model": SMOL, "messages": ASK},
                   headers={"x-api-key": "s3cret", "anthropic-version": "2023-06-01"})
    assert r.status_code == 200 and r.json()["input_tokens"] > 0


def test_an_assistant_prefill_is_continued(api_url, services):
    """Anthropic's prefill: a last assistant message is the start of the answer; the prompt ends with it (no end
    of turn, no new turn after it), the model goes on from it and the answer holds only what follows."""
    from kronk.api.chat.prompt import prepare_chat

    msgs = [{"role": "user", "content": "List three colors as a JSON array."}]
    prefill = '["red", "'
    req = MessagesRequest.model_validate({"model": SMOL, "max_tokens": 8, "messages": [
        *msgs, {"role": "assistant", "content": prefill}]})
    assert req.chat.continue_final_message
    svc = services[SMOL]
    prompt = prepare_chat(svc, req.chat)
    assert svc.engine.model.detokenize(prompt.tokens).endswith(prefill)
    r = httpx.post(api_url + "/v1/messages", timeout=120, json={
        "model": SMOL, "max_tokens": 8, "temperature": 0,
        "messages": [*msgs, {"role": "assistant", "content": prefill}]}).json()
    assert r["content"][0]["text"] and not r["content"][0]["text"].startswith(prefill), r
    assert r["usage"]["input_tokens"] + r["usage"]["cache_read_input_tokens"] == len(prompt.tokens)
