"""Text completions in the replica: prompt -> tokens (once) -> engine -> items."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from kronk.api.completions.schemas import CompletionRequest
from kronk.api.generation import (
    all_chunks,
    first_chunk,
    format_cost,
    format_grammar,
    generation_request,
    usage_dict,
    whole_text,
)
from kronk.api.limits import check_completion_fits
from kronk.errors import ContextLengthExceeded, Unsupported
from kronk.serving.call import RequestContext
from kronk.serving.items import SSE_DONE, Item, sse
from kronk.serving.service import ModelService
from kronk.telemetry.generation import GenerationObserver


def prepare_completion(svc: ModelService, req: CompletionRequest) -> tuple[list[int], str | None]:
    """The prompt's tokens (text is tokenized with the model's BOS rules, special-token markup read as text)
    and the grammar (blocking: run it off the event loop)."""
    prompt = req.prompt
    tokens = svc.engine.tokenize(prompt, add_special=True, parse_special=False) if isinstance(prompt, str) \
        else list(prompt)
    n_ctx = svc.n_ctx
    if n_ctx and len(tokens) >= n_ctx:
        raise ContextLengthExceeded(len(tokens), n_ctx, param="prompt")
    check_completion_fits(len(tokens), n_ctx, req.token_limit, param="max_tokens", prompt_part="the prompt")
    return tokens, format_grammar(req.response_format)


async def serve_completion(svc: ModelService, req: CompletionRequest, ctx: RequestContext,
                           obs: GenerationObserver) -> AsyncIterator[Item]:
    if req.suffix:
        raise Unsupported("suffix (fill-in-the-middle) is not supported", param="suffix")
    size = len(req.prompt) if isinstance(req.prompt, str) else 0
    size += format_cost(req.response_format)
    tokens, grammar = await svc.prepare(prepare_completion, svc, req, size=size)
    gen_req = generation_request(req, tokens, grammar, ctx.request_id, defaults=svc.sampling.params)
    rid, created = "cmpl-" + ctx.request_id, int(time.time())
    echo = req.prompt if (req.echo and isinstance(req.prompt, str)) else ""
    chunks = svc.engine.generate(gen_req)
    try:
        first = await first_chunk(chunks)
        base = {"id": rid, "object": "text_completion", "created": created, "model": svc.model_id,
                "system_fingerprint": svc.fingerprint}
        if not req.stream:
            text, last = await whole_text(first, chunks)
            obs.done(last)
            yield {**base, "choices": [{"index": 0, "text": echo + text, "logprobs": None,
                                        "finish_reason": last.finish_reason}], "usage": usage_dict(last.usage)}
            return
        pending = echo
        async for c in all_chunks(first, chunks):
            parts = []
            text, pending = pending + c.text, ""
            if text or c.finish_reason:
                ev = {**base, "choices": [{"index": 0, "text": text, "logprobs": None,
                                           "finish_reason": c.finish_reason}]}
                if c.finish_reason and not req.include_usage:
                    ev["usage"] = usage_dict(c.usage)
                parts.append(sse(ev))
            if c.finish_reason:
                obs.done(c)
                if req.include_usage:
                    parts.append(sse({**base, "choices": [], "usage": usage_dict(c.usage)}))
                parts.append(SSE_DONE)
            if parts:
                yield "".join(parts)
    finally:
        await chunks.aclose()
