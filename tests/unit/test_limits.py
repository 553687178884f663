"""Limits on everything a client controls (kronk/api/limits.py, docs/limits.md): each exceeded limit is a 400
(413 for the body) in the OpenAI envelope naming the field and the limit, and no malformed value reaches a 500.

The app runs in one process over the real small models (the session's ``services``), once with small limits
(so that the bodies stay small) and once with the defaults (``api_url``)."""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Iterator
from dataclasses import fields
from urllib.parse import urlparse

import httpx
import pytest
from pydantic import ValidationError

from kronk.api.app import create_app
from kronk.api.chat.schemas import ChatCompletionRequest
from kronk.api.limits import DEFAULT_LIMITS, RESERVED_TEMPLATE_KWARGS, Limits
from kronk.serving.local import LocalBackend
from kronk.settings import Settings, load_settings
from tests.helpers import GEMMA, SMOL, http_server

SMALL = Limits(max_body_bytes=4096, max_json_depth=12, max_messages=4, max_stop=2, max_stop_length=8,
               max_logit_bias=2, max_schema_bytes=512, max_schema_depth=4, max_schema_repeat=50,
               max_schema_repeat_total=80, max_tools=2, max_embedding_inputs=2, max_embedding_tokens=64,
               max_model_name_length=32)
HI = [{"role": "user", "content": "hi"}]
N_CTX = 2048  # tests/conftest.py: both models' slots


@pytest.fixture(scope="module")
def small_url(services, tmp_path_factory) -> Iterator[str]:
    settings = Settings(home=tmp_path_factory.mktemp("kronk-limits"))
    with http_server(create_app(LocalBackend.of_services(services, settings), limits=SMALL)) as url:
        yield url


def post(url: str, body, path: str = "/v1/chat/completions") -> httpx.Response:
    if isinstance(body, (bytes, str)):
        data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
        return httpx.post(url + path, content=data, headers={"content-type": "application/json"}, timeout=120)
    return httpx.post(url + path, json=body, timeout=120)


def error(r: httpx.Response, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def tool(name: str, parameters: dict | None = None) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": parameters or {"type": "object"}}}


def json_schema(schema: dict) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def strings(*max_lengths: int) -> dict:
    return {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": n}
                                             for i, n in enumerate(max_lengths)}}


def nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


# ---- the settings


def test_every_limit_is_a_setting_with_the_same_default():
    for f in fields(Limits):
        assert f.name in Settings.model_fields, f.name
        assert getattr(DEFAULT_LIMITS, f.name) == Settings.model_fields[f.name].default
    assert DEFAULT_LIMITS.max_stop == 16 and DEFAULT_LIMITS.max_body_bytes == 16 * 1024 * 1024


def test_limits_come_from_settings_flags_and_env(tmp_path, monkeypatch):
    monkeypatch.setenv("KRONK_MAX_BODY_BYTES", "2048")
    s = load_settings({"home": str(tmp_path), "max_stop": 3})
    lim = Limits.from_settings(s)
    assert (lim.max_body_bytes, lim.max_stop, lim.max_tools) == (2048, 3, DEFAULT_LIMITS.max_tools)


def test_validation_without_a_context_uses_the_defaults_and_with_one_its_limits():
    body = {"model": GEMMA, "messages": HI, "stop": ["x"] * 3}
    ChatCompletionRequest.model_validate(body)  # 3 <= 16
    with pytest.raises(ValidationError, match="max_stop"):
        ChatCompletionRequest.model_validate(body, context={"limits": SMALL})
    with pytest.raises(ValidationError, match="at most 16 stop sequences"):
        ChatCompletionRequest.model_validate({**body, "stop": ["x"] * 17})


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_sampling_values_are_refused_by_the_schema(value):
    for field in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repeat_penalty"):
        with pytest.raises(ValidationError):
            ChatCompletionRequest.model_validate({"model": GEMMA, "messages": HI, field: value})
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": GEMMA, "messages": HI, "logit_bias": {"5": value}})


# ---- the body


def raw_request(url: str, head: str, body: bytes = b"", timeout_s: float = 20) -> bytes:
    """Send ``head`` (request line and headers) and ``body`` on a socket without finishing what the headers
    promise, and read the answer: it comes only if the server answers without reading the rest."""
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=timeout_s) as s:
        s.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        out = b""
        while b"\r\n\r\n" not in out or not out.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    return out


def test_a_body_larger_than_the_limit_is_refused_from_its_content_length_unread(small_url):
    # a gigabyte announced, nothing sent: the answer comes at once (the server never waits for the body)
    out = raw_request(small_url, "POST /v1/chat/completions HTTP/1.1\nHost: 127.0.0.1\n"
                      "Content-Type: application/json\nContent-Length: 1000000000\n")
    assert out.startswith(b"HTTP/1.1 413"), out[:200]
    err = json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]
    assert err["code"] == "request_too_large" and "4096 bytes" in err["message"] and "max_body_bytes" in err["message"]


def test_a_chunked_body_is_read_only_up_to_the_limit(small_url):
    # chunks past the limit, and the chunked body never ends: the answer comes once the limit is passed
    chunk = b"x" * 1000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(6))
    out = raw_request(small_url, "POST /v1/chat/completions HTTP/1.1\nHost: 127.0.0.1\n"
                      "Content-Type: application/json\nTransfer-Encoding: chunked\n", body)
    assert out.startswith(b"HTTP/1.1 413"), out[:200]


def test_a_body_within_the_limit_is_read(small_url):
    pad = " " * (SMALL.max_body_bytes - 200)
    r = post(small_url, json.dumps({"model": "no-such-model", "messages": HI}) + pad)
    assert error(r, 404)["param"] == "model"
    r = post(small_url, json.dumps({"model": "no-such-model", "messages": HI}) + pad + " " * 300)
    assert error(r, 413)["code"] == "request_too_large"


# ---- each limit: 400, the field as param, the limit in the message

LIMITED = [
    ("messages", {"messages": HI * 5}, "messages", "at most 4 messages", "max_messages"),
    ("stop count", {"messages": HI, "stop": ["a", "b", "c"]}, "stop", "at most 2 stop sequences", "max_stop"),
    ("stop length", {"messages": HI, "stop": "abcdefghi"}, "stop", "at most 8 characters", "max_stop_length"),
    ("stop length in a list", {"messages": HI, "stop": ["a", "abcdefghi"]}, "stop", "at most 8 characters",
     "max_stop_length"),
    ("logit_bias", {"messages": HI, "logit_bias": {"1": 1, "2": 1, "3": 1}}, "logit_bias",
     "at most 2 logit_bias entries", "max_logit_bias"),
    ("tools", {"messages": HI, "tools": [tool("a"), tool("b"), tool("c")]}, "tools", "at most 2 tools", "max_tools"),
    ("schema depth", {"messages": HI, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": nested(4)}}}, "response_format.json_schema.schema", "more than 4 levels",
     "max_schema_depth"),
    ("schema size", {"messages": HI, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "description": "d" * 600}}}},
     "response_format.json_schema.schema", "at most 512 are allowed", "max_schema_bytes"),
    ("tool schema depth", {"messages": HI, "tools": [tool("a", nested(4))]}, "tools.0.function.parameters",
     "more than 4 levels", "max_schema_depth"),
    ("tool schema size", {"messages": HI, "tools": [tool("a", {"type": "object", "description": "d" * 600})]},
     "tools.0.function.parameters", "at most 512 are allowed", "max_schema_bytes"),
    ("schema repetition", {"messages": HI, "response_format": json_schema(strings(51))},
     "response_format.json_schema.schema", "maxLength is 51; at most 50", "max_schema_repeat"),
    ("schema pattern repetition", {"messages": HI, "response_format": json_schema(
        {"type": "string", "pattern": "^a{2,51}$"})}, "response_format.json_schema.schema", "{2,51} repeats more "
     "than 50", "max_schema_repeat"),
    ("schema repetition total", {"messages": HI, "response_format": json_schema(strings(50, 31))},
     "response_format.json_schema.schema", "add up to 81; at most 80", "max_schema_repeat_total"),
    ("tool schema repetition", {"messages": HI, "tools": [tool("a", {"type": "array", "minItems": 51})]},
     "tools.0.function.parameters", "minItems is 51", "max_schema_repeat"),
    ("tool schemas' repetition total", {"messages": HI, "tools": [tool("a", strings(50)), tool("b", strings(31))]},
     "tools", "add up to 81", "max_schema_repeat_total"),
    ("model name", {"model": "m" * 33, "messages": HI}, "model", "at most 32 characters", "max_model_name_length"),
    ("embedding inputs", {"input": ["a", "b", "c"], "_path": "/v1/embeddings"}, "input", "at most 2 inputs",
     "max_embedding_inputs"),
    ("embedding tokens", {"input": ["a", "word " * 80], "_path": "/v1/embeddings"}, "input",
     "more than 64 tokens (at input[1])", "max_embedding_tokens"),
    ("embedding token ids", {"input": [list(range(2, 40)), list(range(2, 40))], "_path": "/v1/embeddings"}, "input",
     "at most 64 are allowed", "max_embedding_tokens"),
    ("pull model name", {"model": "m" * 33, "_path": "/v1/models/pull"}, "model", "at most 32 characters",
     "max_model_name_length"),
    ("completion stop", {"prompt": "a", "stop": ["a", "b", "c"], "_path": "/v1/completions"}, "stop",
     "at most 2 stop sequences", "max_stop"),
]


@pytest.mark.parametrize(("name", "body", "param", "text", "setting"), LIMITED, ids=[c[0] for c in LIMITED])
def test_each_limit_is_a_400_naming_the_field_and_the_limit(small_url, name, body, param, text, setting):
    body = {"model": GEMMA, **body}
    path = body.pop("_path", "/v1/chat/completions")
    err = error(post(small_url, body, path))
    assert err["param"] == param, err
    assert text in err["message"] and setting in err["message"], err
    assert err["type"] == "invalid_request_error"


def test_within_the_limits_is_served(small_url):
    r = post(small_url, {"model": SMOL, "messages": HI * 4, "stop": ["a", "abcdefgh"], "max_tokens": 2,
                         "logit_bias": {"1": 1, "2": 1}, "temperature": 0,
                         "tools": [tool("a", nested(3)), tool("b")]})
    assert r.status_code == 200, r.text
    r = post(small_url, {"model": GEMMA, "input": ["a", "b"]}, "/v1/embeddings")
    assert r.status_code == 200 and len(r.json()["data"]) == 2
    r = post(small_url, {"model": GEMMA, "input": list(range(2, 10))}, "/v1/embeddings")  # token ids: one input
    assert r.status_code == 200 and len(r.json()["data"]) == 1


@pytest.mark.parametrize("schema", [strings(20_000), {"type": "array", "items": {"type": "integer"}, "maxItems": 10**5},
                                    {"type": "string", "pattern": "^a{0,100000}$"}, strings(10**9)])
def test_a_schema_whose_grammar_would_crash_or_exhaust_the_server_is_a_400(api_url, schema):
    # maxLength 20000 crashed llama.cpp's grammar parser (the whole process); 10**9 wrote a grammar of gigabytes
    err = error(post(api_url, {"model": SMOL, "messages": HI, "max_tokens": 1, "response_format": json_schema(schema)}))
    assert err["param"] == "response_format.json_schema.schema" and "max_schema_repeat" in err["message"], err
    err = error(post(api_url, {"model": SMOL, "messages": HI, "max_tokens": 1, "tool_choice": "required",
                               "tools": [tool("f", schema)]}))
    assert err["param"] == "tools.0.function.parameters" and "max_schema_repeat" in err["message"], err


def test_nesting_deeper_than_max_json_depth_is_a_400(small_url):
    err = error(post(small_url, {"model": GEMMA, "messages": HI, "metadata": nested(12)}))
    assert "more than 12 levels" in err["message"] and "max_json_depth" in err["message"]


# ---- malformed values (default limits): 400s, never 500s


def chat_bytes(extra: str) -> str:
    """A chat body's JSON text with ``extra`` (JSON text: ``"key": value``) added."""
    return json.dumps({"model": GEMMA, "messages": HI})[:-1] + ", " + extra + "}"


MALFORMED = [
    ("an integer of 5000 digits", chat_bytes('"seed": ' + "9" * 5000), "more than 4300 digits"),
    ("a float that overflows", chat_bytes('"temperature": 1e400'), "out of range"),
    ("NaN", chat_bytes('"temperature": NaN'), "NaN is not a JSON number"),
    ("Infinity", chat_bytes('"top_p": -Infinity'), "-Infinity is not a JSON number"),
    ("nesting past Python's recursion limit", chat_bytes('"metadata": ' + "[" * 100_000 + "]" * 100_000),
     "levels deep"),
    ("nesting past max_json_depth", chat_bytes('"metadata": ' + "[" * 100 + "]" * 100), "more than 64 levels"),
    ("not UTF-8", b'{"model": "\xff"}', "not valid UTF-8"),
    ("UTF-8 encoded surrogate", b'{"model": "\xed\xa0\x80"}', "not valid UTF-8"),
]


@pytest.mark.parametrize(("name", "body", "text"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_json_is_a_400(api_url, name, body, text):
    err = error(post(api_url, body))
    assert text in err["message"], err


LONE = "@lone@"  # stands for a lone surrogate's escape in the JSON text
SURROGATES = [
    ("chat message", "/v1/chat/completions", {"messages": [{"role": "user", "content": f"a{LONE}b"}]},
     "messages.0.content"),
    ("chat message part", "/v1/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": LONE}]}]}, "messages.0.content.0.text"),
    ("stop string", "/v1/chat/completions", {"messages": HI, "stop": ["ok", LONE]}, "stop.1"),
    ("object key", "/v1/chat/completions", {"messages": HI, "chat_template_kwargs": {LONE: 1}},
     "chat_template_kwargs.<key>"),
    ("completion prompt", "/v1/completions", {"prompt": LONE}, "prompt"),
    ("embedding input", "/v1/embeddings", {"input": ["ok", LONE]}, "input.1"),
    ("model name", "/v1/chat/completions", {"model": LONE, "messages": []}, "model"),
]


@pytest.mark.parametrize(("name", "path", "body", "param"), SURROGATES, ids=[c[0] for c in SURROGATES])
@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\uDBFF"])
def test_a_lone_surrogate_is_a_400_naming_where(api_url, name, path, body, param, escape):
    text = json.dumps({"model": GEMMA, **body}).replace(LONE, escape)
    err = error(post(api_url, text, path))
    assert err["message"] == "the request contains an invalid Unicode string (lone surrogate)"
    assert err["param"] == param


def test_an_escaped_surrogate_pair_is_text(api_url):
    # json.dumps escapes an emoji as a surrogate pair, which is one character, not a lone surrogate
    r = post(api_url, json.dumps({"model": SMOL, "messages": [{"role": "user", "content": "hi \U0001F600"}],
                                  "max_tokens": 1, "stop": ["\U0001F600"]}))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("name", ["messages", "tools", "add_generation_prompt", "bos_token", "raise_exception"])
def test_chat_template_kwargs_may_not_set_what_the_server_renders_with(api_url, name):
    assert name in RESERVED_TEMPLATE_KWARGS
    err = error(post(api_url, {"model": SMOL, "messages": HI, "chat_template_kwargs": {name: [], "ok": 1}}))
    assert err["param"] == "chat_template_kwargs" and name in err["message"]


def test_other_chat_template_kwargs_are_passed(api_url):
    r = post(api_url, {"model": SMOL, "messages": HI, "max_tokens": 1, "chat_template_kwargs": {"x": {"y": 1}}})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("field", "value"), [("top_k", 2**31), ("repeat_last_n", 2**40), ("min_tokens", 2**63),
                                              ("max_tokens", 2**63), ("max_completion_tokens", 10**30)])
def test_integers_beyond_what_the_engine_takes_are_400s(api_url, field, value):
    assert error(post(api_url, {"model": GEMMA, "messages": HI, field: value}))["param"] == field


# ---- max_tokens against the context (OpenAI's context_length_exceeded)


def prompt_tokens(url: str, body: dict, path: str) -> int:
    r = post(url, {**body, "max_tokens": 1}, path)
    assert r.status_code == 200, r.text
    return r.json()["usage"]["prompt_tokens"]


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/chat/completions", {"model": SMOL, "messages": HI}, "max_tokens"),
    ("/v1/chat/completions", {"model": SMOL, "messages": HI}, "max_completion_tokens"),
    ("/v1/completions", {"model": GEMMA, "prompt": "Once upon a time"}, "max_tokens"),
])
def test_a_token_limit_the_context_cannot_hold_is_a_400_naming_the_limit(api_url, services, path, body, field):
    n_prompt = prompt_tokens(api_url, body, path)
    for asked in (10**9, 2**63 - 1, N_CTX - n_prompt + 1):
        err = error(post(api_url, {**body, field: asked}, path))
        assert err["code"] == "context_length_exceeded" and err["param"] == field, err
        assert err["message"].startswith(
            f"This model's maximum context length is {N_CTX} tokens. However, you requested "
            f"{n_prompt + asked} tokens ({n_prompt} in the "), err
        assert f"{asked} in the completion" in err["message"]
    # exactly what the context holds is served (the end-of-generation token forced: it ends at once)
    eos = services[body["model"]].engine.model.eos
    r = post(api_url, {**body, field: N_CTX - n_prompt, "logit_bias": {str(eos): 100}}, path)
    assert r.status_code == 200, r.text
    r = post(api_url, {**body, "logit_bias": {str(eos): 100}}, path)  # no limit: the rest of the context
    assert r.status_code == 200, r.text


def test_tools_that_leave_no_room_for_the_token_limit_are_dropped_not_refused(api_url, services, monkeypatch):
    # as when tools alone overflow the context (OpenWebUI attaches ~36 to every turn, its titles ask 1000 tokens),
    # on a model that is given tools with tool_choice auto (here: as if its catalog entry said it calls tools)
    monkeypatch.setattr(services[SMOL], "prompt_tools", True)
    big = {"type": "function", "function": {"name": "lookup", "description": "word " * 1200,
                                            "parameters": {"type": "object"}}}
    eos = services[SMOL].engine.model.eos
    body = {"model": SMOL, "messages": HI, "tools": [big], "logit_bias": {str(eos): 100}}
    assert prompt_tokens(api_url, body, "/v1/chat/completions") > N_CTX - 1000  # the tools take the room
    r = post(api_url, {**body, "max_tokens": 1000})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] < 100  # answered without the tools
    err = error(post(api_url, {**body, "tool_choice": "required", "max_tokens": 1000}))  # tools needed: refused
    assert err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"


def test_a_streamed_request_over_the_context_gets_a_status_not_a_stream(api_url):
    r = post(api_url, {"model": SMOL, "messages": HI, "stream": True, "max_tokens": 10**6})
    assert r.headers["content-type"] == "application/json"
    assert error(r)["code"] == "context_length_exceeded"
