"""The request path, in one process over the real models: each request is rendered and tokenized once, its one
id reaches the slot that runs it, and preparing a huge request does not pause other requests' streams."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from kronk.serving.service import ModelService
from tests.helpers import GEMMA, SMOL, sse_events

TOOLS = [{"type": "function", "function": {"name": f"tool_{i}", "description": f"Tool number {i}",
                                           "parameters": {"type": "object", "properties": {"x": {"type": "string"}}}}}
         for i in range(3)]


@pytest.fixture
def counted(services: dict[str, ModelService], monkeypatch: pytest.MonkeyPatch) -> Callable[[str], Counter]:
    """Counts of the template renders and tokenizations each model's engine does from now on."""
    counts: dict[str, Counter] = {}

    def wrap(model: str, name: str) -> None:
        engine = services[model].engine
        real = getattr(engine, name)

        def counting(*args: Any, **kwargs: Any) -> Any:
            counts.setdefault(model, Counter())[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(engine, name, counting)

    for model in services:
        for name in ("tokenize", "apply_chat_template"):
            wrap(model, name)
    return lambda model: counts.get(model, Counter())


@pytest.mark.parametrize("stream", [False, True])
def test_a_chat_with_tools_is_rendered_and_tokenized_once(api_url, counted, stream):
    body = {"model": SMOL, "stream": stream, "max_tokens": 8, "temperature": 0, "tools": TOOLS, "tool_choice": "auto",
            "messages": [{"role": "system", "content": "You help."}, {"role": "user", "content": "Use a tool."}]}
    r = httpx.post(api_url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    usage = sse_events(r.text)[-1]["usage"] if stream else r.json()["usage"]
    assert usage["prompt_tokens"] > 0
    assert counted(SMOL) == Counter({"apply_chat_template": 1, "tokenize": 1})


def test_a_text_completion_is_tokenized_once_and_token_ids_not_at_all(api_url, counted):
    for prompt, tokenizations in (("Once upon a time", 1), ([2, 651, 6037, 576, 6081, 603], 0)):
        r = httpx.post(api_url + "/v1/completions", timeout=120,
                       json={"model": GEMMA, "prompt": prompt, "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200, r.text
        assert counted(GEMMA)["tokenize"] == tokenizations
        counted(GEMMA).clear()


def test_the_request_id_is_the_running_slots(api_url):
    body = {"model": GEMMA, "prompt": "Write a long story:", "stream": True, "max_tokens": 400,
            "ignore_eos": True, "temperature": 0}
    with httpx.stream("POST", api_url + "/v1/completions", json=body, timeout=120,
                      headers={"x-request-id": "slot-watch-1"}) as r:
        assert r.headers["x-request-id"] == "slot-watch-1"
        lines = r.iter_lines()
        first = next(json.loads(ln[6:]) for ln in lines if ln.startswith("data: "))
        assert first["id"] == "cmpl-slot-watch-1"
        slots = httpx.get(api_url + "/v1/stats", timeout=30).json()["models"][GEMMA]["stats"]["slots"]
        assert [s["request_id"] for s in slots if s["state"] != "idle"] == ["slot-watch-1"]


def test_preparing_a_2mb_prompt_does_not_pause_another_stream(api_url):
    """A 2 MB prompt takes seconds to tokenize here; done on the event loop it would stall every stream of the
    replica for as long. The gaps between a stream's items with it running must stay close to the stream's
    gaps alone."""

    async def stream_gaps() -> list[float]:
        body = {"model": GEMMA, "prompt": "Count to a hundred:", "stream": True, "max_tokens": 80,
                "ignore_eos": True, "temperature": 0}
        gaps, last = [], None
        async with httpx.AsyncClient(timeout=120) as c, c.stream("POST", api_url + "/v1/completions", json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    now = time.perf_counter()
                    if last is not None:
                        gaps.append(now - last)
                    last = now
        return gaps

    big: dict[str, Any] = {}

    def send_big() -> None:
        t0 = time.perf_counter()
        r = httpx.post(api_url + "/v1/completions", timeout=300,
                       json={"model": GEMMA, "prompt": "hello world, these are words. " * 70_000, "max_tokens": 1})
        big.update(status=r.status_code, error=r.json()["error"], seconds=time.perf_counter() - t0)

    async def together() -> list[float]:
        task = asyncio.create_task(stream_gaps())
        await asyncio.sleep(0.5)  # the stream is under way
        t = threading.Thread(target=send_big)
        t.start()
        gaps = await task
        await asyncio.to_thread(t.join, 300)
        return gaps

    alone = asyncio.run(stream_gaps())
    with_big = asyncio.run(together())
    assert big["status"] == 400 and big["error"]["code"] == "context_length_exceeded"
    assert big["seconds"] > 1.0, big  # long enough to have stalled the stream, had it run on the loop
    assert max(with_big) < max(alone) + 0.5, (max(alone), max(with_big), big["seconds"])
