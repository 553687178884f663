"""``/v1/chat/completions`` in the replica: one chat turn (kronk/api/chat/turn.py) shaped as OpenAI's
chat.completion object or its chunk stream."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from kronk.api.chat.prompt import ChatPrompt, chat_messages, chat_size, prepare_chat, render_chat
from kronk.api.chat.schemas import ChatCompletionRequest
from kronk.api.chat.turn import chat_turn, usage_details, whole_turn
from kronk.serving.call import RequestContext
from kronk.serving.items import SSE_DONE, Item, sse
from kronk.serving.service import ModelService
from kronk.telemetry.generation import GenerationObserver

__all__ = ["ChatPrompt", "chat_messages", "chat_size", "prepare_chat", "render_chat", "serve_chat"]


async def serve_chat(svc: ModelService, req: ChatCompletionRequest, ctx: RequestContext,
                     obs: GenerationObserver) -> AsyncIterator[Item]:
    rid, created = "chatcmpl-" + ctx.request_id, int(time.time())
    steps = chat_turn(svc, req, ctx, obs)
    try:
        if not req.stream:
            turn = await whole_turn(steps)
            parsed = turn.output
            msg: dict[str, Any] = {"role": "assistant", "content": parsed.content}
            if parsed.reasoning_content:
                msg["reasoning_content"] = parsed.reasoning_content
            if parsed.tool_calls:
                msg["tool_calls"] = [tc.to_dict() for tc in parsed.tool_calls]
            elif msg["content"] is None:
                msg["content"] = ""
            yield {"id": rid, "object": "chat.completion", "created": created, "model": svc.model_id,
                   "system_fingerprint": svc.fingerprint,
                   "choices": [{"index": 0, "message": msg, "finish_reason": turn.finish_reason, "logprobs": None}],
                   "usage": usage_details(turn.usage, turn.reasoning_tokens)}
            return

        base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": svc.model_id,
                "system_fingerprint": svc.fingerprint}
        out = [sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                          "logprobs": None, "finish_reason": None}]})]
        async for step in steps:
            for ev in step.events:
                if ev.tool_call is not None:
                    delta: dict[str, Any] = {"tool_calls": [ev.tool_call]}
                elif ev.reasoning is not None:
                    delta = {"reasoning_content": ev.reasoning}
                else:
                    delta = {"content": ev.content}
                out.append(sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                      "finish_reason": None}]}))
            if step.finish_reason:
                final = {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                              "finish_reason": step.finish_reason}]}
                usage = usage_details(step.usage, step.reasoning_tokens)
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
        await steps.aclose()
