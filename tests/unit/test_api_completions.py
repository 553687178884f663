"""``/v1/completions`` shaping in one process (the real model, the in-process backend, real HTTP)."""

from __future__ import annotations

from tests.helpers import GEMMA


def test_completions_streamed_and_not(client):
    r = client.completions.create(model=GEMMA, prompt="The capital of France is", max_tokens=12, temperature=0)
    assert r.usage.completion_tokens == 12 and r.choices[0].finish_reason == "length"
    assert r.id.startswith("cmpl-") and r.object == "text_completion"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=GEMMA, prompt="The capital of France is", max_tokens=12, temperature=0, stream=True) if c.choices)
    assert streamed == r.choices[0].text
    echo = client.completions.create(model=GEMMA, prompt="Hello", max_tokens=2, temperature=0, echo=True)
    assert echo.choices[0].text.startswith("Hello")


def test_streamed_usage_comes_last_when_asked_for(client):
    chunks = list(client.completions.create(model=GEMMA, prompt="One, two,", max_tokens=5, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


def test_stop_sequences(client):
    full = client.completions.create(model=GEMMA, prompt="Once upon a time", max_tokens=30, temperature=0)
    text = full.choices[0].text
    stop = text[10:14]
    cut = client.completions.create(model=GEMMA, prompt="Once upon a time", max_tokens=30, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]


def test_seed_reproducibility(client):
    def sample(seed):
        return client.completions.create(model=GEMMA, prompt="My favourite animal is", max_tokens=20,
                                         temperature=1.0, seed=seed).choices[0].text

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_token_id_prompts_equal_their_text(client, services):
    prompt = "The capital of France is"
    ids = services[GEMMA].engine.tokenize(prompt, add_special=True, parse_special=False)
    by_text = client.completions.create(model=GEMMA, prompt=prompt, max_tokens=6, temperature=0)
    by_ids = client.completions.create(model=GEMMA, prompt=ids, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == by_text.usage.prompt_tokens == len(ids)
