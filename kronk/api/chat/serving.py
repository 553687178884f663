"""``/v1/chat/completions`` in the replica: one chat turn (kronk/api/chat/turn.py) per choice (``n`` of them run at
once, each parsed on its own) shaped as OpenAI's chat.completion object or its chunk stream, with the tokens'
log-probabilities when the request asks (``logprobs``, ``top_logprobs``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from kronk.api.chat.prompt import ChatPrompt, chat_messages, chat_size, prepare_chat, render_chat
from kronk.api.chat.schemas import ChatCompletionRequest
from kronk.api.chat.turn import TurnStep, WholeTurn, chat_turn, prepare_turn, usage_details, whole_turn
from kronk.api.generation import (
    choice_observers,
    choice_seeds,
    choices_usage,
    logprob_count,
    merge_choices,
    token_str,
)
from kronk.engine.protocol import TokenLogprob
from kronk.serving.call import RequestContext
from kronk.serving.items import SSE_DONE, Item, sse
from kronk.serving.service import ModelService
from kronk.telemetry.generation import GenerationObserver

__all__ = ["ChatPrompt", "chat_messages", "chat_size", "prepare_chat", "render_chat", "serve_chat"]


def token_logprob(t: TokenLogprob) -> dict[str, Any]:
    """One token of OpenAI's ``logprobs.content``."""
    return {"token": token_str(t.piece), "logprob": t.logprob, "bytes": list(t.piece),
            "top_logprobs": [{"token": token_str(p), "logprob": v, "bytes": list(p)} for _, p, v in t.top]}


def choice_logprobs(tokens: list[TokenLogprob]) -> dict[str, Any]:
    """A choice's (or a streamed chunk's) ``logprobs``: every generated token's, reasoning and tool calls
    included, in ``content``."""
    return {"content": [token_logprob(t) for t in tokens], "refusal": None}


def choice_requests(req: ChatCompletionRequest) -> list[ChatCompletionRequest]:
    """One request per choice: each with a seed of its own (choice_seeds)."""
    if req.n == 1:
        return [req]
    return [req.model_copy(update={"n": 1, "seed": seed}) for seed in choice_seeds(req.seed, req.n)]


async def whole_turns(turns: list[AsyncIterator[TurnStep]]) -> list[WholeTurn]:
    """Every choice's turn collected, the turns running at once."""
    if len(turns) == 1:
        return [await whole_turn(turns[0])]
    steps: list[list[TurnStep]] = [[] for _ in turns]
    async for i, step in merge_choices(turns):
        steps[i].append(step)

    async def replay(kept: list[TurnStep]) -> AsyncIterator[TurnStep]:
        for s in kept:
            yield s

    return [await whole_turn(replay(kept)) for kept in steps]


def message_of(turn: WholeTurn) -> dict[str, Any]:
    parsed = turn.output
    msg: dict[str, Any] = {"role": "assistant", "content": parsed.content}
    if parsed.reasoning_content:
        msg["reasoning_content"] = parsed.reasoning_content
    if parsed.tool_calls:
        msg["tool_calls"] = [tc.to_dict() for tc in parsed.tool_calls]
    elif msg["content"] is None:
        msg["content"] = ""
    return msg


async def serve_chat(svc: ModelService, req: ChatCompletionRequest, ctx: RequestContext,
                     obs: GenerationObserver) -> AsyncIterator[Item]:
    rid, created = "chatcmpl-" + ctx.request_id, int(time.time())
    with_logprobs = logprob_count(req) is not None  # a request error here is the route's status
    reqs = choice_requests(req)
    prompt = await prepare_turn(svc, req)  # once, whatever n: the choices differ only in their seeds
    turns = [chat_turn(svc, r, ctx, o, prompt) for r, o in zip(reqs, choice_observers(obs, len(reqs)), strict=True)]
    try:
        if not req.stream:
            done = await whole_turns(turns)
            choices = []
            for i, turn in enumerate(done):
                lp = None
                if with_logprobs:
                    lp = choice_logprobs([t for s in turn.steps for t in s.chunk.logprobs or ()])
                choices.append({"index": i, "message": message_of(turn), "finish_reason": turn.finish_reason,
                                "logprobs": lp})
            yield {"id": rid, "object": "chat.completion", "created": created, "model": svc.model_id,
                   "system_fingerprint": svc.fingerprint, "choices": choices,
                   "usage": usage_details(choices_usage([t.usage for t in done]),
                                          sum(t.reasoning_tokens for t in done))}
            return

        base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": svc.model_id,
                "system_fingerprint": svc.fingerprint}
        out = [sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                          "logprobs": None, "finish_reason": None}]}) for i in range(len(turns))]
        unsent: list[list[TokenLogprob]] = [[] for _ in turns]  # logprobs of tokens whose text is not out yet
        ends: list[TurnStep | None] = [None] * len(turns)

        def take_logprobs(i: int) -> dict[str, Any] | None:
            if not unsent[i]:
                return None
            lp, unsent[i] = choice_logprobs(unsent[i]), []
            return lp

        async for i, step in merge_choices(turns):
            if with_logprobs and step.chunk.logprobs:
                unsent[i].extend(step.chunk.logprobs)
            for j, ev in enumerate(step.events):
                if ev.tool_call is not None:
                    delta: dict[str, Any] = {"tool_calls": [ev.tool_call]}
                elif ev.reasoning is not None:
                    delta = {"reasoning_content": ev.reasoning}
                else:
                    delta = {"content": ev.content}
                lp = take_logprobs(i) if j == len(step.events) - 1 else None  # a step's tokens with its last piece
                out.append(sse({**base, "choices": [{"index": i, "delta": delta, "logprobs": lp,
                                                      "finish_reason": None}]}))
            if step.finish_reason:
                ends[i] = step
                final = {**base, "choices": [{"index": i, "delta": {}, "logprobs": take_logprobs(i),
                                              "finish_reason": step.finish_reason}]}
                if any(e is None for e in ends):
                    out.append(sse(final))  # other choices still run: the usage comes with the last
                else:
                    usage = usage_details(choices_usage([e.usage for e in ends]),
                                          sum(e.reasoning_tokens for e in ends))
                    if req.include_usage:
                        out.append(sse(final))
                        final = {**base, "choices": [], "usage": usage}
                    else:
                        final["usage"] = usage
                    out.append(sse(final))
                    out.append(SSE_DONE)
            if out:
                yield "".join(out)
                out = []
    finally:
        for t in turns:
            await t.aclose()
