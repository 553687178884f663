"""Replica-side helpers every generating endpoint (chat, completions) shares: request fields -> the engine's
GenerationRequest, and the engine's chunks -> whole texts and usage; several choices (``n``) run at once and
merged; token log-probabilities as text."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

from kronk.api.schemas import ResponseFormat, SamplingFields
from kronk.engine.grammar import json_object_grammar, json_schema_grammar
from kronk.engine.protocol import GenerationChunk, GenerationRequest, SamplingParams, Usage
from kronk.errors import InvalidRequest
from kronk.serving.service import INLINE_PREPARE_CHARS
from kronk.telemetry.generation import GenerationObserver

T = TypeVar("T")


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
    return GenerationRequest(
        prompt=prompt, sampling=sampling_from(req, grammar, defaults), max_tokens=getattr(req, "token_limit", None),
        min_tokens=req.min_tokens, ignore_eos=req.ignore_eos, stop=req.stop_list + list(stop),
        stop_token_ids=list(stop_token_ids), request_id=request_id, repetition_guard=repetition_guard(req, grammar),
        logprobs=logprob_count(req),
    )


def logprob_count(req: SamplingFields) -> int | None:
    """The alternatives per token a request asks for with its log-probabilities (None: no logprobs). Chat
    (a request with a ``top_logprobs`` field): ``logprobs: true`` and ``top_logprobs`` (default 0); completions:
    ``logprobs: k`` (0..20; the schema checks the range)."""
    lp = req.logprobs
    if "top_logprobs" in type(req).model_fields:
        top = getattr(req, "top_logprobs", None)
        if lp is None or lp is False or (type(lp) is int and lp == 0):
            if top:
                raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
            return None
        if lp is not True and lp != 1:
            raise InvalidRequest(f"logprobs is true or false for chat completions, got {lp}; top_logprobs says how "
                                 "many alternatives each token lists", param="logprobs")
        return top or 0
    if lp is None or lp is False:
        return None
    return 0 if lp is True else int(lp)


def token_str(piece: bytes) -> str:
    """A token's text: its bytes as UTF-8, a byte that is part of a character split across tokens as ``\\xNN``
    (as OpenAI writes such tokens; their ``bytes`` are exact)."""
    return piece.decode("utf-8", errors="backslashreplace")


def choice_seeds(seed: int | None, n: int) -> list[int | None]:
    """Each choice's seed: ``seed + i`` when the request gives one (choice 0 is what ``n: 1`` gives), else None
    (each choice's sampler draws a random seed of its own)."""
    return [None if seed is None else seed + i for i in range(n)]


def choices_usage(usages: Sequence[Usage]) -> Usage:
    """Several choices' usage as one: the prompt counted once, as OpenAI counts it; the completions summed; the
    prompt tokens that every choice found cached."""
    return Usage(prompt_tokens=usages[0].prompt_tokens, completion_tokens=sum(u.completion_tokens for u in usages),
                 cached_tokens=min(u.cached_tokens for u in usages))


class ChoiceObserver:
    """A further choice's observer (``n`` > 1): its generation is counted in the replica's metrics like the
    first one's; the request's span and its phases stay the first choice's."""

    def __init__(self, obs: GenerationObserver):
        self.obs = obs

    def done(self, chunk: GenerationChunk) -> None:
        rec = self.obs.recorder
        if rec is not None and chunk.usage is not None and chunk.timings is not None:
            rec.on_generation(chunk.usage, chunk.timings)

    def __getattr__(self, name: str) -> Any:  # everything else is the request's observer
        return getattr(self.obs, name)


def choice_observers(obs: GenerationObserver, n: int) -> list[Any]:
    return [obs] + [ChoiceObserver(obs) for _ in range(n - 1)]


_END = object()


async def merge_choices(streams: Sequence[AsyncIterator[T]]) -> AsyncIterator[tuple[int, T]]:
    """(choice index, item) from every stream as each produces them, the streams running at once; the first
    failure is raised. All are closed when the caller stops reading (their engine slots freed). One stream is
    read directly."""
    if len(streams) == 1:
        try:
            async for x in streams[0]:
                yield 0, x
        finally:
            await streams[0].aclose()
        return
    queue: asyncio.Queue[tuple[int, Any, BaseException | None]] = asyncio.Queue()

    async def pump(i: int, it: AsyncIterator[T]) -> None:
        try:
            async for x in it:
                queue.put_nowait((i, x, None))
        except Exception as e:
            queue.put_nowait((i, None, e))
        else:
            queue.put_nowait((i, _END, None))

    tasks = [asyncio.create_task(pump(i, it)) for i, it in enumerate(streams)]
    try:
        left = len(tasks)
        while left:
            i, x, err = await queue.get()
            if err is not None:
                raise err
            if x is _END:
                left -= 1
                continue
            yield i, x
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for it in streams:
            await it.aclose()


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
