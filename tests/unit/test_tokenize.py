"""``/v1/tokenize``, ``/v1/detokenize``, ``/v1/apply-template`` and llama-server's paths, over the real small models
(tests/conftest.py) and real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kronk.api.app import create_app
from kronk.api.limits import Limits
from kronk.serving.local import LocalBackend
from kronk.serving.service import ModelService
from kronk.settings import Settings
from tests.helpers import GEMMA, SMOL, http_server

TEXT = {SMOL: "Hello <|im_start|> wörld, 🙂 ok", GEMMA: "Hello <start_of_turn> wörld, 🙂 ok"}
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def urls(api_url: str, services: dict[str, ModelService],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``main``: both models (tests/conftest.py); ``tight``: both with small limits; ``alone``: SmolLM2 as the one
    model (llama-server's routes name none)."""
    settings = Settings(home=tmp_path_factory.mktemp("kronk-home"))
    tight = Limits(max_embedding_tokens=64)
    with http_server(create_app(LocalBackend.of_services(services, settings), limits=tight)) as small, \
            http_server(create_app(LocalBackend.of_services({SMOL: services[SMOL]}, settings))) as alone:
        yield {"main": api_url, "tight": small, "alone": alone}


def post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=120)


def ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    return r.json()


def error(r: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, r.text
    return r.json()["error"]


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_tokenize_is_the_engines_tokenization_and_detokenize_round_trips(urls, services, model):
    engine, text, url = services[model].engine, TEXT[model], urls["main"]
    with_bos = ok(post(url, "/v1/tokenize", {"model": model, "prompt": text}))  # vLLM's: special tokens added
    assert with_bos["tokens"] == engine.tokenize(text, add_special=True, parse_special=True)
    assert with_bos["count"] == len(with_bos["tokens"]) and with_bos["max_model_len"] == services[model].n_ctx
    bare = ok(post(url, "/tokenize", {"model": model, "content": text}))  # llama-server's: none added
    assert bare["tokens"] == engine.tokenize(text, add_special=False, parse_special=True)
    assert ok(post(url, "/v1/tokenize", {"model": model, "prompt": text, "add_special_tokens": False})) == bare
    literal = ok(post(url, "/v1/tokenize", {"model": model, "content": text, "parse_special": False}))["tokens"]
    assert literal == engine.tokenize(text, add_special=False, parse_special=False) and literal != bare["tokens"]
    if model == GEMMA:  # Gemma's vocabulary adds BOS; SmolLM2's adds nothing
        assert with_bos["tokens"] == [engine.model.bos, *bare["tokens"]]
    back = ok(post(url, "/v1/detokenize", {"model": model, "tokens": bare["tokens"]}))
    assert back == {"content": text, "prompt": text}
    assert ok(post(url, "/detokenize", {"model": model, "tokens": literal}))["content"] == text


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_pieces_join_to_the_text(urls, services, model):
    text = TEXT[model]
    r = ok(post(urls["main"], "/tokenize", {"model": model, "content": text, "with_pieces": True}))
    ids = [p["id"] for p in r["tokens"]]
    assert ids == services[model].engine.tokenize(text, add_special=False, parse_special=True)
    joined = b"".join(p["piece"].encode() if isinstance(p["piece"], str) else bytes(p["piece"]) for p in r["tokens"])
    assert joined == text.encode()


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_apply_template_is_the_prompt_chat_completions_prefills(urls, services, model):
    url = urls["main"]
    # with tools (SmolLM2's template renders none): left out when chat completions leaves them out, described
    # when a call is forced
    cases = [{}, {"tools": TOOLS}, {"tools": TOOLS, "tool_choice": "required"}] if model == SMOL else [{}]
    for extra in cases:
        body = {"model": model, "messages": MESSAGES, **extra}
        prompt = ok(post(url, "/v1/apply-template", body))["prompt"]
        assert ok(post(url, "/apply-template", body))["prompt"] == prompt
        chat = ok(post(url, "/v1/chat/completions", {**body, "max_tokens": 1, "temperature": 0}))
        n = chat["usage"]["prompt_tokens"]
        assert ok(post(url, "/v1/tokenize", {"model": model, "prompt": prompt}))["count"] == n
        assert ok(post(url, "/v1/tokenize", body))["count"] == n  # messages, tokenized as chat completions does
        if not extra:
            assert prompt == services[model].engine.apply_chat_template(MESSAGES, add_generation_prompt=True)
        elif extra.get("tool_choice") == "required":
            assert "get_weather" in prompt  # a forced call describes the tools, whatever the template renders


def test_a_prompt_longer_than_the_context_is_still_rendered_and_counted(urls, services):
    long = [{"role": "user", "content": "word " * 3000}]  # about 3000 tokens; the slots hold 2048
    r = ok(post(urls["main"], "/v1/tokenize", {"model": SMOL, "messages": long}))
    assert r["count"] > services[SMOL].n_ctx
    assert "word word" in ok(post(urls["main"], "/v1/apply-template", {"model": SMOL, "messages": long}))["prompt"]
    chat = post(urls["main"], "/v1/chat/completions", {"model": SMOL, "messages": long, "max_tokens": 1})
    assert error(chat)["code"] == "context_length_exceeded"


def test_llama_server_paths_name_no_model_when_one_is_served(urls, services):
    alone = urls["alone"]
    r = ok(post(alone, "/tokenize", {"content": "a cat"}))
    assert r["tokens"] == services[SMOL].engine.tokenize("a cat", add_special=False, parse_special=True)
    assert ok(post(alone, "/detokenize", {"tokens": r["tokens"]}))["content"] == "a cat"
    assert "Name a colour." in ok(post(alone, "/apply-template", {"messages": MESSAGES}))["prompt"]
    assert error(post(urls["main"], "/tokenize", {"content": "a cat"}))["param"] == "model"  # two are served


def test_refusals(urls, services):
    main, tight = urls["main"], urls["tight"]
    n_vocab = services[SMOL].engine.model.n_vocab
    for path, body in [("/v1/tokenize", {"prompt": "x"}), ("/v1/detokenize", {"tokens": [1]}),
                       ("/v1/apply-template", {"messages": MESSAGES})]:
        assert error(post(main, path, {"model": "nope", **body}), 404)["param"] == "model"
    for bad in ([n_vocab], [-1], [1, 2**40]):
        e = error(post(main, "/v1/detokenize", {"model": SMOL, "tokens": bad}))
        assert e["param"] == "tokens" and "not a token id" in e["message"]
    error(post(main, "/v1/detokenize", {"model": SMOL, "tokens": ["a"]}))
    error(post(main, "/v1/tokenize", {"model": SMOL, "prompt": "x", "content": "y"}))
    error(post(main, "/v1/tokenize", {"model": SMOL}))
    error(post(main, "/v1/tokenize", {"model": SMOL, "prompt": "x", "add_special": True, "add_special_tokens": False}))
    # MESSAGES ends with the user's: nothing to continue; and no turn left unopened otherwise
    for flag in ({"add_generation_prompt": False}, {"continue_final_message": True}):
        error(post(main, "/v1/apply-template", {"model": SMOL, "messages": MESSAGES, **flag}))
        error(post(main, "/v1/tokenize", {"model": SMOL, "messages": MESSAGES, **flag}))
    prefill = [*MESSAGES, {"role": "assistant", "content": "The answer is"}]
    r = post(main, "/v1/apply-template", {"model": SMOL, "messages": prefill, "continue_final_message": True,
                                          "add_generation_prompt": False})
    assert r.status_code == 200 and r.json()["prompt"].endswith("The answer is"), r.text
    error(post(main, "/v1/apply-template", {"model": SMOL, "messages": []}))
    # the answer's size: at most max_embedding_tokens tokens in or out
    e = error(post(tight, "/v1/tokenize", {"model": SMOL, "prompt": "cat " * 100}))
    assert e["param"] == "prompt" and "max_embedding_tokens" in e["message"]
    e = error(post(tight, "/v1/tokenize", {"model": SMOL, "messages": [{"role": "user", "content": "cat " * 100}]}))
    assert e["param"] == "messages"
    e = error(post(tight, "/v1/detokenize", {"model": SMOL, "tokens": [1] * 65}))
    assert "max_embedding_tokens" in e["message"]
    assert ok(post(tight, "/v1/tokenize", {"model": SMOL, "prompt": "cat " * 10}))["count"] <= 64
