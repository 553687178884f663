"""Text completions in the replica: prompt -> tokens (once) -> engine (one generation per choice, ``n`` at once)
-> items, with the tokens' log-probabilities when the request asks (``logprobs: k``)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

from kronk.api.completions.schemas import CompletionRequest
from kronk.api.generation import (
    all_chunks,
    choice_observers,
    choice_seeds,
    choices_usage,
    first_chunk,
    format_cost,
    format_grammar,
    generation_request,
    merge_choices,
    token_str,
    usage_dict,
)
from kronk.api.limits import check_completion_fits
from kronk.engine.protocol import GenerationChunk, GenerationRequest, TokenLogprob
from kronk.engine.text import Utf8Decoder
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


class LogprobShaper:
    """A choice's tokens as OpenAI's completion ``logprobs`` (``tokens``, ``token_logprobs``, ``top_logprobs``: the
    k most likely tokens and the sampled one, ``text_offset``: characters of the text before each token), the
    offsets counted on across a stream's chunks."""

    def __init__(self) -> None:
        self._decoder = Utf8Decoder()
        self._chars = 0

    def shape(self, tokens: list[TokenLogprob]) -> dict[str, Any]:
        out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for t in tokens:
            text = token_str(t.piece)
            out["tokens"].append(text)
            out["token_logprobs"].append(t.logprob)
            top: dict[str, float] = {}
            for _, piece, v in t.top:
                top.setdefault(token_str(piece), v)  # two tokens of the same text: the likelier one
            top.setdefault(text, t.logprob)
            out["top_logprobs"].append(top)
            out["text_offset"].append(self._chars)
            self._chars += len(self._decoder.feed(t.piece))
        return out


def choice_generations(gen_req: GenerationRequest, n: int, seed: int | None) -> list[GenerationRequest]:
    """One engine request per choice, each with a seed of its own (choice_seeds)."""
    if n == 1:
        return [gen_req]
    return [dataclasses.replace(gen_req, sampling=dataclasses.replace(gen_req.sampling, seed=s))
            for s in choice_seeds(seed, n)]


async def choice_stream(svc: ModelService, gen_req: GenerationRequest) -> AsyncIterator[GenerationChunk]:
    chunks = svc.engine.generate(gen_req)
    try:
        async for c in all_chunks(await first_chunk(chunks), chunks):
            yield c
    finally:
        await chunks.aclose()


async def serve_completion(svc: ModelService, req: CompletionRequest, ctx: RequestContext,
                           obs: GenerationObserver) -> AsyncIterator[Item]:
    if req.suffix:
        raise Unsupported("suffix (fill-in-the-middle) is not supported", param="suffix")
    if req.echo and req.logprobs is not None and req.logprobs is not False:
        raise Unsupported("echo with logprobs (the prompt's log-probabilities) is not supported; send one of them",
                          param="logprobs")
    size = len(req.prompt) if isinstance(req.prompt, str) else 0
    size += format_cost(req.response_format)
    tokens, grammar = await svc.prepare(prepare_completion, svc, req, size=size)
    gen_req = generation_request(req, tokens, grammar, ctx.request_id, defaults=svc.sampling.params)
    with_logprobs = gen_req.logprobs is not None
    rid, created = "cmpl-" + ctx.request_id, int(time.time())
    echo = req.prompt if (req.echo and isinstance(req.prompt, str)) else ""
    n = req.n
    streams = [choice_stream(svc, g) for g in choice_generations(gen_req, n, req.seed)]
    observers = choice_observers(obs, n)
    shapers = [LogprobShaper() for _ in range(n)]
    try:
        base = {"id": rid, "object": "text_completion", "created": created, "model": svc.model_id,
                "system_fingerprint": svc.fingerprint}
        if not req.stream:
            texts: list[list[str]] = [[] for _ in range(n)]
            lps: list[list[TokenLogprob]] = [[] for _ in range(n)]
            lasts: list[GenerationChunk | None] = [None] * n
            async for i, c in merge_choices(streams):
                texts[i].append(c.text)
                lps[i].extend(c.logprobs or ())
                if c.finish_reason:
                    observers[i].done(c)
                    lasts[i] = c
            yield {**base, "choices": [{"index": i, "text": echo + "".join(texts[i]),
                                        "logprobs": shapers[i].shape(lps[i]) if with_logprobs else None,
                                        "finish_reason": last.finish_reason} for i, last in enumerate(lasts)],
                   "usage": usage_dict(choices_usage([last.usage for last in lasts]))}
            return
        pending = [echo] * n  # text not sent yet, and its tokens' logprobs
        unsent: list[list[TokenLogprob]] = [[] for _ in range(n)]
        ends: list[GenerationChunk | None] = [None] * n
        async for i, c in merge_choices(streams):
            parts = []
            text, pending[i] = pending[i] + c.text, ""
            unsent[i].extend(c.logprobs or ())
            if text or c.finish_reason:
                lp = None
                if with_logprobs:
                    lp, unsent[i] = shapers[i].shape(unsent[i]), []
                ev = {**base, "choices": [{"index": i, "text": text, "logprobs": lp,
                                           "finish_reason": c.finish_reason}]}
                if c.finish_reason:
                    observers[i].done(c)
                    ends[i] = c
                last = c.finish_reason is not None and all(e is not None for e in ends)
                if last and not req.include_usage:
                    ev["usage"] = usage_dict(choices_usage([e.usage for e in ends]))
                parts.append(sse(ev))
                if last:
                    if req.include_usage:
                        parts.append(sse({**base, "choices": [], "usage": usage_dict(choices_usage(
                            [e.usage for e in ends]))}))
                    parts.append(SSE_DONE)
            if parts:
                yield "".join(parts)
    finally:
        for s in streams:
            await s.aclose()
