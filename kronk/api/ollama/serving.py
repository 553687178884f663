"""Ollama's ``/api/chat``, ``/api/generate`` and ``/api/embed`` in the replica: one chat turn
(kronk/api/chat/turn.py), a raw prompt (kronk/api/completions/serving.py) or the embeddings handler, shaped as
Ollama answers: NDJSON lines (one JSON object each) ending with a ``done: true`` line that carries the counts
and durations (nanoseconds), or one JSON object."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from kronk.api.chat.turn import chat_turn, whole_turn
from kronk.api.completions.serving import prepare_completion
from kronk.api.embeddings.serving import serve_embeddings
from kronk.api.generation import all_chunks, first_chunk, format_cost, generation_request
from kronk.api.ollama.schemas import OllamaEmbed, OllamaRaw, OllamaTurn
from kronk.engine.protocol import GenerationChunk, Usage
from kronk.errors import ContextLengthExceeded, InvalidRequest
from kronk.parsers import StreamEvent, collect
from kronk.serving.call import RequestContext
from kronk.serving.items import Failure, Item
from kronk.serving.service import ModelService
from kronk.telemetry.generation import GenerationObserver

NS = 1_000_000_000


def now_iso() -> str:
    """Ollama's ``created_at``: UTC, RFC 3339 with a Z."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def done_reason(finish_reason: str | None) -> str:
    """Ollama's done_reason: ``length`` for a cut answer, else ``stop`` (a turn that made calls included)."""
    return "length" if finish_reason == "length" else "stop"


def final_fields(finish_reason: str | None, chunk: GenerationChunk | None, usage: Usage | None,
                 t0_ns: int) -> dict[str, Any]:
    """The counts and durations of the ``done`` line, from the engine's last chunk (its timings). The model is
    loaded before the call reaches this handler, so load_duration is 0 here (a load request's answer, the
    route's, counts its load)."""
    t = chunk.timings if chunk is not None else None
    u = usage or Usage()
    return {"done": True, "done_reason": done_reason(finish_reason), "total_duration": time.perf_counter_ns() - t0_ns,
            "load_duration": 0, "prompt_eval_count": u.prompt_tokens,
            "prompt_eval_duration": int((t.prefill_s if t else 0.0) * NS), "eval_count": u.completion_tokens,
            "eval_duration": int((t.decode_s if t else 0.0) * NS)}


def tool_calls(events: list[StreamEvent]) -> list[dict[str, Any]]:
    """Streamed call fragments as Ollama's tool calls, arguments as objects. A call whose arguments are not a
    whole JSON object (a token limit cut it: done_reason length) is left out."""
    out = []
    for i, tc in enumerate(collect(events).tool_calls):
        args = tc.function.arguments
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except json.JSONDecodeError:
                continue
        if isinstance(args, dict):
            out.append({"id": tc.id, "function": {"index": i, "name": tc.function.name, "arguments": args}})
    return out


class Shaper:
    """One answer's lines: ``message`` pieces for a chat, ``response`` pieces for a generate."""

    def __init__(self, name: str, shape: str):
        self.name, self.chat = name, shape == "chat"

    def head(self) -> dict[str, Any]:
        return {"model": self.name, "created_at": now_iso()}

    def piece(self, content: str = "", thinking: str = "", calls: list[dict[str, Any]] | None = None,
              done: dict[str, Any] | None = None) -> dict[str, Any]:
        out = self.head()
        if self.chat:
            msg: dict[str, Any] = {"role": "assistant", "content": content}
            if thinking:
                msg["thinking"] = thinking
            if calls:
                msg["tool_calls"] = calls
            out["message"] = msg
        else:
            out["response"] = content
            if thinking:
                out["thinking"] = thinking
        return {**out, **(done or {"done": False})}


async def serve_ollama_chat(svc: ModelService, req: OllamaTurn, ctx: RequestContext,
                            obs: GenerationObserver) -> AsyncIterator[Item]:
    t0 = time.perf_counter_ns()
    if req.ollama.think and not svc.reasoning:  # Ollama's answer to think for a model without reasoning
        raise InvalidRequest(f'"{req.ollama.name}" does not support thinking', param="think")
    shaper = Shaper(req.ollama.name, req.ollama.shape)
    steps = chat_turn(svc, req, ctx, obs)
    try:
        if not req.stream:
            turn = await whole_turn(steps)
            out, last = turn.output, turn.steps[-1]
            calls = tool_calls([ev for s in turn.steps for ev in s.events if ev.tool_call is not None])
            yield shaper.piece(out.content or "", out.reasoning_content or "", calls,
                               final_fields(turn.finish_reason, last.chunk, turn.usage, t0))
            return
        call_events: list[StreamEvent] = []
        async for step in steps:
            content, thinking = [], []
            for ev in step.events:
                if ev.tool_call is not None:
                    call_events.append(ev)  # Ollama sends each call whole: with the turn's end
                elif ev.reasoning is not None:
                    thinking.append(ev.reasoning)
                else:
                    content.append(ev.content or "")
            lines = [line(shaper.piece("".join(content), "".join(thinking)))] if content or thinking else []
            if step.finish_reason:
                calls = tool_calls(call_events)
                if calls:
                    lines.append(line(shaper.piece(calls=calls)))
                lines.append(line(shaper.piece(done=final_fields(step.finish_reason, step.chunk, step.usage, t0))))
            if lines:
                yield "".join(lines)
    finally:
        await steps.aclose()


def prepare_raw(svc: ModelService, req: OllamaRaw) -> tuple[list[int], str | None]:
    """A raw prompt's tokens, special-token markup read as the tokens it names (a raw prompt is the client's
    own rendering of the chat template), then the completion's checks and grammar."""
    assert isinstance(req.prompt, str)
    tokens = svc.engine.tokenize(req.prompt, add_special=True, parse_special=True)
    return prepare_completion(svc, req.model_copy(update={"prompt": tokens}))


async def serve_ollama_generate(svc: ModelService, req: OllamaTurn | OllamaRaw, ctx: RequestContext,
                                obs: GenerationObserver) -> AsyncIterator[Item]:
    """``/api/generate``: templated (a chat turn over one user message) or ``raw``."""
    if isinstance(req, OllamaTurn):
        async for item in serve_ollama_chat(svc, req, ctx, obs):
            yield item
        return
    t0 = time.perf_counter_ns()
    size = (len(req.prompt) if isinstance(req.prompt, str) else 0) + format_cost(req.response_format)
    tokens, grammar = await svc.prepare(prepare_raw, svc, req, size=size)
    chunks = svc.engine.generate(generation_request(req, tokens, grammar, ctx.request_id,
                                                    defaults=svc.sampling.params))
    shaper = Shaper(req.ollama.name, "generate")
    try:
        first = await first_chunk(chunks)
        parts: list[str] = []
        async for c in all_chunks(first, chunks):
            if c.finish_reason:
                obs.done(c)
            if not req.stream:
                parts.append(c.text)
                if c.finish_reason:
                    yield shaper.piece("".join(parts), done=final_fields(c.finish_reason, c, c.usage, t0))
                continue
            lines = [line(shaper.piece(c.text))] if c.text else []
            if c.finish_reason:
                lines.append(line(shaper.piece(done=final_fields(c.finish_reason, c, c.usage, t0))))
            if lines:
                yield "".join(lines)
    finally:
        await chunks.aclose()


def _cut(svc: ModelService, inputs: list[str], n_ctx: int) -> list[list[int]]:
    return [svc.engine.tokenize(text)[:n_ctx] for text in inputs]


async def serve_ollama_embed(svc: ModelService, req: OllamaEmbed, ctx: RequestContext,
                             obs: GenerationObserver) -> AsyncIterator[Item]:
    """The embeddings handler's answer as Ollama's; with ``truncate`` (Ollama's default) an input longer than the
    model's embedding context is cut to it, as Ollama does, instead of refused."""
    t0 = time.perf_counter_ns()
    try:
        items = [item async for item in serve_embeddings(svc, req, ctx, obs)]
    except ContextLengthExceeded as e:
        if not req.truncate or not isinstance(req.input, str | list) or e.param != "input":
            raise
        texts = [req.input] if isinstance(req.input, str) else list(req.input)
        cut = await svc.prepare(_cut, svc, texts, e.n_ctx, size=sum(len(t) for t in texts))
        items = [item async for item in serve_embeddings(svc, req.model_copy(update={"input": cut}), ctx, obs)]
    answer = items[0]
    if isinstance(answer, Failure) or not isinstance(answer, dict):
        yield answer
        return
    vectors = [d["embedding"] for d in answer["data"]]
    if req.legacy:
        yield {"embedding": vectors[0]}
        return
    yield {"model": req.ollama.name, "embeddings": vectors, "total_duration": time.perf_counter_ns() - t0,
           "load_duration": 0, "prompt_eval_count": answer["usage"]["prompt_tokens"]}
