"""The routing ingress: two models behind one app, each call crossing a Serve handle to its model's replica.

The API's shaping is tested in one process (tests/unit/test_api_*.py); here what only Serve shows: routing by
model, items and errors across the handle hop, a disconnect freeing the replica's slot, a latecomer admitted
while a batch runs."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from tests.helpers import GEMMA, SMOL, openai_client
from tests.integration.utils import serve_app
from tests.unit.test_api_chat import test_chat_non_streamed_and_streamed_agree  # noqa: F401 (through the hop)
from tests.waiting import until

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def url():
    args = {"models": [{"name": GEMMA, "parallel": 4, "ctx_size": 2048, "num_cpus": 1},
                       {"name": SMOL, "parallel": 2, "ctx_size": 2048, "num_cpus": 1}]}
    with serve_app(args) as u:
        yield u


@pytest.fixture(scope="module")
def client(url):
    return openai_client(url)


def healthy(url: str) -> bool:
    r = httpx.get(url + "/health", timeout=10)
    return r.status_code == 200 and r.json()["status"] == "ok"


def stats(url: str, model: str) -> dict:
    return httpx.get(url + "/v1/stats", timeout=10).json()["models"][model]["stats"]


def test_two_models_are_listed(client):
    ids = {m.id for m in client.models.list() if getattr(m, "served", True)}
    assert {GEMMA, SMOL} <= ids
    assert client.models.retrieve(GEMMA).id == GEMMA


def test_embeddings_reach_the_model(client):
    r = client.embeddings.create(model=GEMMA, input=["the cat", "a rocket launch"])
    assert [d.index for d in r.data] == [0, 1] and len(r.data[0].embedding) > 100


# Errors found by the route (the body, the model) and in the model's replica (crossing the hop, where there
# is one, as one Failure item).
BAD_INPUTS = [
    ("malformed JSON", b"{not json", 400, None),
    ("unknown model", {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ("temperature too high", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}],
                              "temperature": 3}, 400, "temperature"),
    ("logit_bias token out of vocab", {"model": GEMMA, "messages": [{"role": "user", "content": "hi"}],
                                       "logit_bias": {"999999999": 5}}, 400, "logit_bias"),
    ("prompt longer than context", {"model": GEMMA, "stream": True,
                                    "messages": [{"role": "user", "content": "word " * 3000}]}, 400, "messages"),
    ("image content for a text model", {"model": GEMMA, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}, 400, "messages"),
]


@pytest.mark.parametrize(("name", "body", "status", "param"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_its_envelope_and_the_server_stays_healthy(url, name, body, status, param):
    if isinstance(body, bytes):
        r = httpx.post(url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"},
                       timeout=60)
    else:
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param, err
    assert healthy(url)


def test_disconnect_mid_stream_frees_the_slot(url, client):
    body = {"model": GEMMA, "prompt": "Write a very long story about the sea:", "stream": True,
            "max_tokens": 2000, "temperature": 0, "ignore_eos": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
        n = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                n += 1
            if n >= 5:
                break
    until(lambda: stats(url, GEMMA)["active"] == 0, 15, lambda: f"the slot to be freed: {stats(url, GEMMA)}")
    t0 = time.monotonic()
    r2 = client.completions.create(model=GEMMA, prompt="Hi", max_tokens=3, temperature=0)
    assert r2.usage.completion_tokens == 3
    assert time.monotonic() - t0 < 10


async def test_latecomer_starts_while_long_streams_run(url):
    ac = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)

    async def run(prompt: str, n: int) -> tuple[float, float]:
        t0 = time.monotonic()
        first = None
        stream = await ac.completions.create(model=GEMMA, prompt=prompt, max_tokens=n, temperature=0,
                                             stream=True, extra_body={"ignore_eos": True})
        async for c in stream:
            if first is None and c.choices and c.choices[0].text:
                first = time.monotonic() - t0
        return first, time.monotonic() - t0

    longs = [asyncio.create_task(run("Once upon a time", 200)) for _ in range(2)]
    await asyncio.sleep(1.0)
    short_ttft, short_total = await run("Hi", 4)
    (_, long1), (_, long2) = await asyncio.gather(*longs)
    assert short_ttft < 0.25 * min(long1, long2), (short_ttft, long1, long2)
    assert short_total < 0.5 * min(long1, long2)
