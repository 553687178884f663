"""Every bad input gets the OpenAI error envelope with the right status, in one process (real models, the
in-process backend, real HTTP); the server stays healthy after each."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import GEMMA


def healthy(url: str) -> bool:
    r = httpx.get(url + "/health", timeout=10)
    return r.status_code == 200 and r.json()["status"] == "ok"


BAD_INPUTS = [
    ("malformed JSON", b"{not json", 400, None),
    ("empty body", b"", 400, None),
    ("body is a list", [1, 2], 400, None),
    ("missing model", {"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
    ("unknown model", {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ("missing messages", {"model": GEMMA}, 400, "messages"),
    ("empty messages", {"model": GEMMA, "messages": []}, 400, "messages"),
    ("unknown role", {"model": GEMMA, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages.0.role"),
    ("content wrong type", {"model": GEMMA, "messages": [{"role": "user", "content": 42}]}, 400, "messages.0.content"),
    ("temperature as text", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}],
                             "temperature": "hot"}, 400, "temperature"),
    ("temperature too high", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}],
                              "temperature": 3}, 400, "temperature"),
    ("negative max_tokens", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}],
                             "max_tokens": -5}, 400, "max_tokens"),
    ("top_p out of range", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}],
                            "top_p": 1.5}, 400, "top_p"),
    ("n over the limit", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}], "n": 9}, 400, "n"),
    ("bad response_format", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}],
                             "response_format": {"type": "xml"}}, 400, "response_format.type"),
    ("json_schema without schema", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}],
                                    "response_format": {"type": "json_schema"}}, 400, "response_format"),
    ("tool_choice names unknown tool", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}],
                                        "tool_choice": {"type": "function", "function": {"name": "x"}}}, 400, None),
    ("logit_bias key not a token", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}],
                                    "logit_bias": {"abc": 1}}, 400, "logit_bias"),
    ("logit_bias token out of vocab", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}],
                                       "logit_bias": {"999999999": 5}}, 400, "logit_bias"),
    ("prompt longer than context", {"model": GEMMA, "messages": [{"role": "user", "content": "word " * 3000}]},
     400, "messages"),
    ("image content for a text model", {"model": GEMMA, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, 400, "messages"),
    ("stop not strings", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}], "stop": [1, 2]},
     400, "stop"),
    ("completions without prompt", {"model": GEMMA, "_path": "/v1/completions"}, 400, "prompt"),
    ("embeddings empty input", {"model": GEMMA, "input": [], "_path": "/v1/embeddings"}, 400, "input"),
]


EXTRA_BAD_INPUTS = [
    ("completion prompt longer than context", {"model": GEMMA, "prompt": "word " * 3000, "_path": "/v1/completions"},
     400, "prompt"),
    ("completion token outside the vocabulary", {"model": GEMMA, "prompt": [2, 10_000_000],
                                                 "_path": "/v1/completions"}, 400, "prompt"),
    ("suffix", {"model": GEMMA, "prompt": "a", "suffix": "b", "_path": "/v1/completions"}, 400, "suffix"),
    ("logprobs over the limit", {"model": GEMMA, "prompt": "a", "logprobs": 21, "_path": "/v1/completions"}, 400,
     "logprobs"),
    ("embedding dimensions too large", {"model": GEMMA, "input": "a", "dimensions": 100_000,
                                        "_path": "/v1/embeddings"}, 400, "dimensions"),
    ("json schema that is no object", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}],
                                       "response_format": {"type": "json_schema",
                                                           "json_schema": {"name": "x", "schema": {"type": 7}}}},
     400, "response_format.json_schema.schema"),
    # request limits and malformed values (tests/unit/test_limits.py has them all; docs/limits.md lists them)
    ("integer of 5000 digits", b'{"model": "gemma3-270m", "seed": ' + b"9" * 5000 + b"}", 400, None),
    ("nesting past the recursion limit", b'{"model": "gemma3-270m", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     400, None),
    ("NaN", b'{"model": "gemma3-270m", "messages": [], "temperature": NaN}', 400, None),
    ("lone surrogate", b'{"model": "gemma3-270m", "messages": [{"role": "user", "content": "\\ud800"}]}', 400,
     "messages.0.content"),
    ("reserved chat_template_kwargs", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}],
                                       "chat_template_kwargs": {"messages": []}}, 400, "chat_template_kwargs"),
    ("max_tokens past the context", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}],
                                     "max_tokens": 1_000_000_000}, 400, "max_tokens"),
    ("max_completion_tokens past int64", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}],
                                          "max_completion_tokens": 2**63}, 400, "max_completion_tokens"),
    ("top_k past int32", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}], "top_k": 2**31}, 400,
     "top_k"),
    ("too many stop sequences", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}],
                                 "stop": ["x"] * 17}, 400, "stop"),
    ("stop sequence too long", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}],
                                "stop": "x" * 257}, 400, "stop"),
    ("schema repetition past max_schema_repeat", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}],
                                                  "response_format": {"type": "json_schema", "json_schema": {
                                                      "name": "x", "schema": {"type": "string", "maxLength": 20_000}}}},
     400, "response_format.json_schema.schema"),
]


def post(url: str, body, path: str = "/v1/chat/completions") -> httpx.Response:
    if isinstance(body, dict) and "_path" in body:
        body = dict(body)
        path = body.pop("_path")
    if isinstance(body, bytes):
        return httpx.post(url + path, content=body, headers={"content-type": "application/json"}, timeout=60)
    return httpx.post(url + path, json=body, timeout=60)


@pytest.mark.parametrize(("name", "body", "status", "param"), BAD_INPUTS + EXTRA_BAD_INPUTS,
                         ids=[b[0] for b in BAD_INPUTS + EXTRA_BAD_INPUTS])
def test_bad_input_gets_openai_error_and_server_stays_healthy(api_url, name, body, status, param):
    r = post(api_url, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and err["type"]
    if param is not None:
        assert err["param"] == param, err
    assert healthy(api_url)


def test_a_streamed_request_that_fails_before_its_first_token_gets_a_status_not_a_stream(api_url):
    r = post(api_url, {"model": GEMMA, "stream": True, "messages": [{"role": "user", "content": "word " * 3000}]})
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == "context_length_exceeded"
