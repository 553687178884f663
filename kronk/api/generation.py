"""Replica-side helpers every generating endpoint (chat, completions) shares: request fields -> the engine's
GenerationRequest, and the engine's chunks -> whole texts and usage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from kronk.api.schemas import ResponseFormat, SamplingFields
from kronk.engine.grammar import json_object_grammar, json_schema_grammar
from kronk.engine.protocol import GenerationChunk, GenerationRequest, SamplingParams, Usage
from kronk.errors import Unsupported
from kronk.serving.service import INLINE_PREPARE_CHARS


def usage_dict(u: Usage | None) -> dict[str, Any]:
    u = u or Usage()
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens, "prompt_tokens_details": {"cached_tokens": u.cached_tokens}}


def sampling_from(req: SamplingFields, grammar: str | None, defaults: SamplingParams | None = None) -> SamplingParams:
    """The request's sampling fields; what it leaves unset takes the model's ``defaults``
    (kronk.serving.sampling; default: the engine's SamplingParams()). A request that asks for greedy decoding
    (``temperature: 0``) gets exactly that: no default repeat penalty (one it sets applies)."""
    d = defaults or SamplingParams()
    greedy = req.temperature is not None and req.temperature <= 0.0
    bias = {int(k): (float("-inf") if v <= -100 else v) for k, v in (req.logit_bias or {}).items()}
    return SamplingParams(
        temperature=d.temperature if req.temperature is None else req.temperature,
        top_k=d.top_k if req.top_k is None else req.top_k,
        top_p=d.top_p if req.top_p is None else req.top_p,
        min_p=d.min_p if req.min_p is None else req.min_p,
        repeat_penalty=(1.0 if greedy else d.repeat_penalty) if req.repeat_penalty is None else req.repeat_penalty,
        repeat_last_n=d.repeat_last_n if req.repeat_last_n is None else req.repeat_last_n,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        seed=req.seed, logit_bias=bias, grammar=grammar,
    )


def repetition_guard(req: SamplingFields, grammar: str | None) -> bool:
    """Whether the engine's repetition guard watches this answer: as the request says; unset, on, except for
    a plain-text ``ignore_eos`` request (it asks for exactly ``max_tokens`` tokens, as benchmarks do)."""
    if req.repetition_guard is not None:
        return req.repetition_guard
    return grammar is not None or not req.ignore_eos


def format_grammar(fmt: ResponseFormat | None) -> str | None:
    """The grammar a ``response_format`` asks for (compiling a schema: call off the event loop)."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return json_object_grammar()
    return json_schema_grammar(fmt.json_schema.schema_, param="response_format.json_schema.schema")


def format_cost(fmt: ResponseFormat | None) -> int:
    """What compiling ``fmt``'s grammar counts as in ModelService.prepare's size: a schema is big work."""
    return INLINE_PREPARE_CHARS if fmt is not None and fmt.type == "json_schema" else 0


def generation_request(req: SamplingFields, prompt: list[int], grammar: str | None, request_id: str,
                       stop: list[str] = (), stop_token_ids: list[int] = (),
                       defaults: SamplingParams | None = None) -> GenerationRequest:
    """The engine's request; ``defaults``: the model's sampling defaults (ModelService.sampling.params)."""
    if req.logprobs:
        raise Unsupported("logprobs are not supported by this server", param="logprobs")
    return GenerationRequest(
        prompt=prompt, sampling=sampling_from(req, grammar, defaults), max_tokens=getattr(req, "token_limit", None),
        min_tokens=req.min_tokens, ignore_eos=req.ignore_eos, stop=req.stop_list + list(stop),
        stop_token_ids=list(stop_token_ids), request_id=request_id, repetition_guard=repetition_guard(req, grammar),
    )


async def first_chunk(chunks: AsyncIterator[GenerationChunk]) -> GenerationChunk:
    """The first chunk: request errors surface here, before any byte is sent."""
    return await chunks.__anext__()


async def all_chunks(first: GenerationChunk, chunks: AsyncIterator[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
    """``first`` and the rest, to the finishing chunk."""
    yield first
    if first.finish_reason:
        return
    async for c in chunks:
        yield c


async def whole_text(first: GenerationChunk, chunks: AsyncIterator[GenerationChunk]) -> tuple[str, GenerationChunk]:
    """The whole text of a non-streamed answer and its last (finishing) chunk."""
    parts, last = [], first
    async for c in all_chunks(first, chunks):
        parts.append(c.text)
        last = c
    return "".join(parts), last
