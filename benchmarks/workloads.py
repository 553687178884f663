"""Benchmark workloads: the same requests sent to kronk's engine in-process or to any OpenAI HTTP server."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

PROMPTS = [
    "The history of the printing press", "A recipe for bread", "How rivers shape valleys",
    "The rules of chess", "Why the sky is blue", "A short story about a lighthouse",
    "The life cycle of stars", "How to learn a language", "The causes of tides", "A day in ancient Rome",
    "How bees make honey", "The basics of algebra", "A guide to camping", "The invention of the telephone",
    "How volcanoes form", "The migration of birds",
]

CHAT_TURNS = [
    "Hi! Can you tell me about the ocean?", "What lives in the deep sea?", "How deep is the deepest point?",
    "Who first went there?", "What did they find?", "Are there plants down there?", "How do fish see in the dark?",
    "What is bioluminescence?", "Which animals glow?", "Can people see it from the surface?",
    "Where can I see it myself?", "Thanks! Summarise our chat in one line.",
]


@dataclass
class Result:
    ttft_s: float
    total_s: float
    tokens: int
    prompt_tokens: int = 0
    cached_tokens: int = 0  # usage.prompt_tokens_details.cached_tokens, where the server reports it

    @property
    def decode_tps(self) -> float:
        d = self.total_s - self.ttft_s
        return (self.tokens - 1) / d if d > 0 and self.tokens > 1 else 0.0


REPEATS = 2  # each measurement is repeated; the best run is reported (the machine is shared and noisy)


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    return max(runs, key=lambda r: r["agg_tok_s"])


def summarize(results: list[Result], wall_s: float) -> dict[str, float]:
    return {
        "agg_tok_s": sum(r.tokens for r in results) / wall_s,
        "ttft_p50_ms": statistics.median(r.ttft_s for r in results) * 1000,
        "decode_tok_s_per_seq": statistics.median(r.decode_tps for r in results),
        "tokens": sum(r.tokens for r in results),
        "wall_s": wall_s,
    }


# ---------------------------------------------------------------------------- HTTP
async def http_completion(client: httpx.AsyncClient, url: str, model: str, prompt: str, n: int) -> Result:
    body = {"model": model, "prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    return await _http_stream(client, url + "/v1/completions", body, lambda c: c["choices"][0].get("text", ""))


async def http_chat(client: httpx.AsyncClient, url: str, model: str, messages: list[dict],
                    n: int) -> tuple[Result, str]:
    body = {"model": model, "messages": messages, "max_tokens": n, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    text: list[str] = []

    def piece(c: dict) -> str:
        t = c["choices"][0].get("delta", {}).get("content") or ""
        text.append(t)
        return t

    r = await _http_stream(client, url + "/v1/chat/completions", body, piece)
    return r, "".join(text)


async def _http_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any], piece) -> Result:
    t0 = time.perf_counter()
    first = None
    tokens = prompt_tokens = cached_tokens = 0
    async with client.stream("POST", url, json=body, timeout=600) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            c = json.loads(line[6:])
            if c.get("choices") and piece(c) and first is None:
                first = time.perf_counter() - t0
            if c.get("usage"):
                tokens = c["usage"]["completion_tokens"]
                prompt_tokens = c["usage"]["prompt_tokens"]
                cached_tokens = (c["usage"].get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    total = time.perf_counter() - t0
    return Result(first if first is not None else total, total, tokens, prompt_tokens, cached_tokens)


async def http_concurrency(url: str, model: str, concurrency: int, n_tokens: int,
                           repeats: int = REPEATS) -> dict[str, float]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(limits=limits) as client:
        async def once(n: int) -> dict[str, float]:
            t0 = time.perf_counter()
            results = await asyncio.gather(*[http_completion(client, url, model, PROMPTS[i % len(PROMPTS)], n)
                                             for i in range(concurrency)])
            return summarize(list(results), time.perf_counter() - t0)

        await once(16)  # warm-up at the same concurrency (page cache, slots, connections)
        return best([await once(n_tokens) for _ in range(repeats)])


async def http_chat_turns(url: str, model: str, n_tokens: int) -> list[dict[str, float]]:
    rows = []
    messages: list[dict] = []
    # a new connection per turn: llama-server (cpp-httplib, which caps the requests per kept-alive connection)
    # closed one mid-chat in two runs, and the turn sent on it failed with "Server disconnected"
    async with httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for i, user in enumerate(CHAT_TURNS):
            messages.append({"role": "user", "content": user})
            r, text = await http_chat(client, url, model, messages, n_tokens)
            messages.append({"role": "assistant", "content": text})
            rows.append({"turn": i + 1, "ttft_ms": r.ttft_s * 1000, "decode_tok_s": r.decode_tps,
                         "prompt_tokens": r.prompt_tokens})
    return rows


# ---------------------------------------------------------------------------- in-process engine
async def engine_completion(engine: Any, prompt: str, n: int) -> Result:
    return (await engine_completion_text(engine, prompt, n))[0]


async def engine_completion_text(engine: Any, prompt: str, n: int) -> tuple[Result, str]:
    """One temperature-0 completion of ``n`` tokens on the engine: its timings and its text."""
    from kronk.engine import GenerationRequest, SamplingParams

    t0, first, tokens, text = time.perf_counter(), None, 0, []
    req = GenerationRequest(prompt=engine.tokenize(prompt), sampling=SamplingParams(temperature=0), max_tokens=n,
                            ignore_eos=True)
    async for c in engine.generate(req):
        if c.token_ids and first is None:
            first = time.perf_counter() - t0
        tokens += len(c.token_ids)
        text.append(c.text)
    total = time.perf_counter() - t0
    return Result(first or total, total, tokens), "".join(text)


async def engine_concurrency(engine: Any, concurrency: int, n_tokens: int,
                             repeats: int = REPEATS) -> dict[str, float]:
    async def once(n: int) -> dict[str, float]:
        t0 = time.perf_counter()
        results = await asyncio.gather(*[engine_completion(engine, PROMPTS[i % len(PROMPTS)], n)
                                         for i in range(concurrency)])
        return summarize(list(results), time.perf_counter() - t0)

    await once(16)  # warm-up at the same concurrency
    return best([await once(n_tokens) for _ in range(repeats)])


async def engine_chat_turns(service: Any, model: str, n_tokens: int) -> list[dict[str, float]]:
    """Through kronk's ModelService (template, parsers) in-process: the same work as the HTTP path."""
    from kronk.api.chat.schemas import ChatCompletionRequest
    from kronk.serving.call import Call, Endpoint, RequestContext

    rows = []
    messages: list[dict] = []
    for i, user in enumerate(CHAT_TURNS):
        messages.append({"role": "user", "content": user})
        body = {"model": model, "messages": messages, "max_tokens": n_tokens, "temperature": 0, "stream": True,
                "ignore_eos": True, "stream_options": {"include_usage": True}}
        t0 = time.perf_counter()
        first = None
        text: list[str] = []
        usage: dict = {}
        call = Call(Endpoint.CHAT, ChatCompletionRequest.model_validate(body), RequestContext(f"bench-chat-{i}"))
        async for item in service.run(call):
            for line in item.split("\n"):
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                c = json.loads(line[6:])
                if c.get("choices"):
                    t = c["choices"][0]["delta"].get("content") or ""
                    if t and first is None:
                        first = time.perf_counter() - t0
                    text.append(t)
                if c.get("usage"):
                    usage = c["usage"]
        total = time.perf_counter() - t0
        messages.append({"role": "assistant", "content": "".join(text)})
        r = Result(first or total, total, usage.get("completion_tokens", 0), usage.get("prompt_tokens", 0))
        rows.append({"turn": i + 1, "ttft_ms": r.ttft_s * 1000, "decode_tok_s": r.decode_tps,
                     "prompt_tokens": r.prompt_tokens})
    return rows


# ---------------------------------------------------------------------------- results
def save_tables(out: Path, tables: dict[str, list[dict]], md: str, meta: dict[str, Any]) -> None:
    """A benchmark's results in ``out``: each table as ``<name>.parquet``, ``results.md`` and ``meta.json``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        pq.write_table(pa.Table.from_pylist(rows), out / f"{name}.parquet")
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    (out / "results.md").write_text(md + "\n")
