"""Token log-probabilities (``logprobs``, ``top_logprobs``) and several choices (``n``) on chat and completions,
through the official client (the real models, the in-process backend, real HTTP); and the engine's side of it."""

from __future__ import annotations

import asyncio
import json
import math
import threading

import httpx
import openai
import pytest

from kronk.engine.protocol import GenerationRequest, SamplingParams
from kronk.engine.sampling import token_logprobs
from tests.helpers import GEMMA, SMOL

MSGS = [{"role": "user", "content": "Name three colors."}]
PROMPT = "The three primary colors are"
WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
                   "required": ["city"]}}}]


def check_greedy_token(token: str, logprob: float, top: list[tuple[str, float]]) -> None:
    """At temperature 0 the sampled token is the most likely one: the first of the (sorted) alternatives."""
    assert logprob <= 0.0
    values = [v for _, v in top]
    assert values == sorted(values, reverse=True)
    assert sum(math.exp(v) for v in values) <= 1.0 + 1e-5
    assert top[0][0] == token and top[0][1] == pytest.approx(logprob, abs=1e-6)


def test_chat_logprobs_shape_and_greedy_tokens(client):
    r = client.chat.completions.create(model=SMOL, messages=MSGS, temperature=0, max_tokens=16, logprobs=True,
                                       top_logprobs=5)
    choice = r.choices[0]
    content = choice.logprobs.content
    assert content, choice.logprobs
    # every generated token but an end-of-turn token (counted in usage, never text)
    assert r.usage.completion_tokens - 1 <= len(content) <= r.usage.completion_tokens
    for t in content:
        assert len(t.top_logprobs) == 5
        assert t.bytes == list(t.token.encode())  # these are whole characters
        assert all(a.bytes == list(a.token.encode()) for a in t.top_logprobs if "\\x" not in a.token)
        check_greedy_token(t.token, t.logprob, [(a.token, a.logprob) for a in t.top_logprobs])
    assert "".join(t.token for t in content).strip() == choice.message.content.strip()

    # top_logprobs 0 (the default): the sampled tokens alone, the same ones
    r0 = client.chat.completions.create(model=SMOL, messages=MSGS, temperature=0, max_tokens=16, logprobs=True)
    lp0 = r0.choices[0].logprobs.content
    assert [t.token for t in lp0] == [t.token for t in content] and all(t.top_logprobs == [] for t in lp0)
    assert [t.logprob for t in lp0] == pytest.approx([t.logprob for t in content], abs=1e-5)


def test_chat_streamed_logprobs_agree_with_non_streamed(client):
    kw = {"model": SMOL, "messages": MSGS, "temperature": 0, "max_tokens": 16, "logprobs": True, "top_logprobs": 2}
    whole = client.chat.completions.create(**kw).choices[0]
    text, streamed = "", []
    for ch in client.chat.completions.create(stream=True, **kw):
        for c in ch.choices:
            text += c.delta.content or ""
            if c.logprobs is not None:
                streamed += c.logprobs.content
    assert text == whole.message.content
    assert [t.token for t in streamed] == [t.token for t in whole.logprobs.content]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in whole.logprobs.content], abs=1e-5)
    assert [[a.token for a in t.top_logprobs] for t in streamed] == \
        [[a.token for a in t.top_logprobs] for t in whole.logprobs.content]


def test_a_request_without_logprobs_is_unchanged(client):
    plain = client.chat.completions.create(model=SMOL, messages=MSGS, temperature=0, max_tokens=16)
    assert plain.choices[0].logprobs is None and len(plain.choices) == 1
    with_lp = client.chat.completions.create(model=SMOL, messages=MSGS, temperature=0, max_tokens=16,
                                             logprobs=True, top_logprobs=20)
    assert with_lp.choices[0].message.content == plain.choices[0].message.content  # the same tokens sampled
    chunks = list(client.chat.completions.create(model=SMOL, messages=MSGS, temperature=0, max_tokens=4,
                                                 stream=True))
    assert all(c.logprobs is None for ch in chunks for c in ch.choices)
    c = client.completions.create(model=GEMMA, prompt=PROMPT, temperature=0, max_tokens=4)
    assert c.choices[0].logprobs is None


def test_completion_logprobs_shape(client):
    r = client.completions.create(model=GEMMA, prompt=PROMPT, temperature=0, max_tokens=12, logprobs=3,
                                  extra_body={"ignore_eos": True})
    choice = r.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 12
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 3 <= len(top) <= 4 and token in top  # the 3 most likely, and the sampled token
        ranked = sorted(top.items(), key=lambda kv: -kv[1])
        check_greedy_token(token, value, ranked)

    # streamed: the same tokens, chunk by chunk, the offsets counted on
    tokens, offsets, text = [], [], ""
    for ch in client.completions.create(model=GEMMA, prompt=PROMPT, temperature=0, max_tokens=12, logprobs=3,
                                        stream=True, extra_body={"ignore_eos": True}):
        for c in ch.choices:
            text += c.text
            if c.logprobs is not None:
                tokens += c.logprobs.tokens
                offsets += c.logprobs.text_offset
    assert text == choice.text and tokens == lp.tokens and offsets == lp.text_offset


@pytest.fixture(scope="module")
def fresh_client(tmp_path_factory):
    """A client on engines of this module's own: the seeded-choice tests compare texts sampled at temperature 1
    and more across requests, and in the whole suite the session's engines (their slots' caches, after hundreds
    of other tests) once gave a different text for the same seeded request (not reproduced in isolation; see
    docs/DEVELOPING.md). Here they start from empty caches."""
    from tests.conftest import serving, small_model_services
    from tests.helpers import openai_client

    with small_model_services() as svcs, serving(svcs, tmp_path_factory.mktemp("home")) as url:
        yield openai_client(url)


def test_chat_n_with_a_seed_gives_choices_of_their_own_seeds(fresh_client):
    client = fresh_client
    kw = {"model": SMOL, "messages": [{"role": "user", "content": "Write a word."}], "temperature": 1.5,
          "max_tokens": 6, "seed": 11}
    r = client.chat.completions.create(n=3, **kw)  # SMOL has 2 slots: the third choice waits for one
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.message.content for c in r.choices]
    again = client.chat.completions.create(n=3, **kw)
    assert [c.message.content for c in again.choices] == texts  # reproducible
    # choice i is what n=1 gives with seed + i
    singles = [client.chat.completions.create(**{**kw, "seed": 11 + i}) for i in range(3)]
    assert [s.choices[0].message.content for s in singles] == texts
    assert len(set(texts)) > 1
    # usage: the prompt counted once, the completions summed
    assert r.usage.prompt_tokens == singles[0].usage.prompt_tokens
    assert r.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)


def test_chat_n_streamed_carries_each_choice_index(fresh_client):
    client = fresh_client
    kw = {"model": GEMMA, "messages": [{"role": "user", "content": "Tell a story."}], "temperature": 1.0,
          "max_tokens": 8, "seed": 5, "n": 3, "logprobs": True}
    whole = client.chat.completions.create(**kw)
    texts, lps, finishes, usage = ["", "", ""], [[], [], []], [None] * 3, None
    for ch in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        for c in ch.choices:
            texts[c.index] += c.delta.content or ""
            finishes[c.index] = c.finish_reason or finishes[c.index]
            if c.logprobs is not None:
                lps[c.index] += [t.token for t in c.logprobs.content]
        usage = ch.usage or usage
    assert texts == [c.message.content for c in whole.choices]
    assert finishes == [c.finish_reason for c in whole.choices]
    assert lps == [[t.token for t in c.logprobs.content] for c in whole.choices]
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_n_at_temperature_zero_gives_identical_choices(client):
    r = client.chat.completions.create(model=GEMMA, messages=MSGS, temperature=0, max_tokens=8, n=3)
    assert len({c.message.content for c in r.choices}) == 1 and len(r.choices) == 3
    c = client.completions.create(model=GEMMA, prompt=PROMPT, temperature=0, max_tokens=8, n=2, logprobs=1)
    assert c.choices[0].text == c.choices[1].text and [x.index for x in c.choices] == [0, 1]
    assert c.choices[0].logprobs.tokens == c.choices[1].logprobs.tokens


def test_completions_n_with_a_seed(client):
    kw = {"model": GEMMA, "prompt": PROMPT, "temperature": 1.5, "max_tokens": 6, "seed": 3}
    r = client.completions.create(n=3, **kw)
    texts = [c.text for c in r.choices]
    assert texts == [client.completions.create(**{**kw, "seed": 3 + i}).choices[0].text for i in range(3)]
    assert len(set(texts)) > 1
    streamed = ["", "", ""]
    for ch in client.completions.create(n=3, stream=True, **kw):
        for c in ch.choices:
            streamed[c.index] += c.text
    assert streamed == texts


def test_n_with_forced_tool_calls_parses_each_choice(client):
    r = client.chat.completions.create(model=SMOL, temperature=1.0, seed=1, max_tokens=32, n=2, tools=WEATHER,
                                       tool_choice="required",
                                       messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert len(r.choices) == 2
    for c in r.choices:
        assert c.finish_reason == "tool_calls", c
        call = c.message.tool_calls[0]
        assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/chat/completions", {"messages": MSGS, "n": 9}, "n"),
    ("/v1/chat/completions", {"messages": MSGS, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": MSGS, "top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": MSGS, "logprobs": 5}, "logprobs"),
    ("/v1/completions", {"prompt": "a", "logprobs": 21}, "logprobs"),
    ("/v1/completions", {"prompt": "a", "n": 9}, "n"),
    ("/v1/completions", {"prompt": "a", "logprobs": 2, "echo": True}, "logprobs"),
])
def test_limits_are_400s(api_url, path, body, param):
    r = httpx.post(api_url + path, json={"model": GEMMA, "max_tokens": 2, **body}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_the_sdk_refuses_nothing_we_accept(client):
    """The largest values are accepted: n 8, top_logprobs 20, completions logprobs 20."""
    r = client.chat.completions.create(model=GEMMA, messages=MSGS, temperature=0, max_tokens=2, n=8,
                                       logprobs=True, top_logprobs=20)
    assert len(r.choices) == 8 and all(len(c.logprobs.content[0].top_logprobs) == 20 for c in r.choices)
    c = client.completions.create(model=GEMMA, prompt=PROMPT, temperature=0, max_tokens=2, logprobs=20)
    assert all(len(t) in (20, 21) for t in c.choices[0].logprobs.top_logprobs)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=GEMMA, prompt=PROMPT, max_tokens=2, n=9)


def test_engine_computes_logprobs_only_when_asked(services):
    engine = services[GEMMA].engine
    prompt = engine.tokenize(PROMPT)

    async def run(logprobs: int | None) -> list:
        req = GenerationRequest(prompt=prompt, sampling=SamplingParams(temperature=0), max_tokens=6,
                                ignore_eos=True, logprobs=logprobs)
        return [c async for c in engine.generate(req)]

    plain = asyncio.run(run(None))
    assert all(c.logprobs is None for c in plain)
    asked = asyncio.run(run(4))
    assert [t for c in asked for t in c.token_ids] == [t for c in plain for t in c.token_ids]
    for c in asked:
        assert [t.token_id for t in c.logprobs] == c.token_ids  # aligned with the chunk's tokens
        for t in c.logprobs:
            assert t.piece == engine.model.piece(t.token_id) and len(t.top) == 4 and t.top[0][0] == t.token_id


def test_token_logprobs_is_the_softmax_of_the_logits():
    import numpy as np

    logits = np.array([1.0, 3.0, 3.0, -2.0, 0.5], dtype=np.float32)
    lp, top = token_logprobs(logits, 0, 3)
    ref = logits - np.log(np.exp(logits).sum())
    assert lp == pytest.approx(ref[0], abs=1e-6)
    assert [i for i, _ in top] == [1, 2, 0]  # ties: the lower id first
    assert [v for _, v in top] == pytest.approx([ref[1], ref[2], ref[0]], abs=1e-6)
    assert token_logprobs(logits, 3, 0) == (pytest.approx(ref[3], abs=1e-6), [])


def test_a_client_that_leaves_frees_every_choice_slot(api_url, services):
    engine = services[GEMMA].engine
    body = {"model": GEMMA, "prompt": PROMPT, "max_tokens": 1000, "n": 3, "stream": True, "logprobs": 2,
            "ignore_eos": True, "repetition_guard": False}
    with httpx.stream("POST", api_url + "/v1/completions", json=body, timeout=60) as r:
        seen = set()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                seen |= {c["index"] for c in json.loads(line[6:])["choices"]}
            if len(seen) == 3:
                break
        assert engine.stats().active >= 1
    for _ in range(200):  # the engine frees the slots at its next step
        if engine.stats().active == 0:
            break
        threading.Event().wait(0.05)
    assert engine.stats().active == 0
