"""One chat turn as typed steps: what every chat-shaped family runs (chat completions, Anthropic Messages,
Responses, Ollama's ``/api/chat``) before shaping the answer its own way.

:func:`chat_turn` prepares the prompt once (render + tokenize, :func:`~kronk.api.chat.serving.prepare_chat`),
runs it on the engine and yields one :class:`TurnStep` per engine chunk: the parsed pieces (content, reasoning,
OpenAI-shaped tool-call fragments) in order, and on the last step the turn's finish reason and usage. A request
error raises before the first step, so a family can still answer it with a status. :func:`whole_turn` collects a
turn for a non-streamed answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kronk.api.chat.prompt import ChatPrompt, chat_size, prepare_chat
from kronk.api.generation import all_chunks, first_chunk, generation_request
from kronk.engine.protocol import GenerationChunk, Usage
from kronk.parsers import ParsedOutput, StreamEvent, collect, new_call_id
from kronk.serving.call import RequestContext
from kronk.telemetry.generation import GenerationObserver

if TYPE_CHECKING:
    from kronk.api.chat.schemas import ChatCompletionRequest
    from kronk.serving.service import ModelService


@dataclass(slots=True)
class TurnStep:
    """The pieces one engine chunk produced; ``finish_reason`` and ``usage`` are set on the turn's last step.

    ``finish_reason``: ``"tool_calls"`` when the turn made calls and ended on its own, ``"length"`` when the token
    limit or the context cut it (a call it cut is still in ``events``, never in content), else the engine's.
    """

    events: list[StreamEvent]
    chunk: GenerationChunk
    finish_reason: str | None = None
    usage: Usage | None = None
    reasoning_tokens: int = 0


@dataclass(slots=True)
class WholeTurn:
    """A collected turn: its output split as the parsers read it, finish reason, usage."""

    output: ParsedOutput
    finish_reason: str
    usage: Usage
    reasoning_tokens: int = 0
    steps: list[TurnStep] = field(default_factory=list)


def turn_finish(engine_reason: str, made_calls: bool, cut_call: bool = False) -> str:
    if engine_reason == "length" or cut_call:  # a call the output ended inside of is a cut answer
        return "length"
    return "tool_calls" if made_calls else engine_reason


async def prepare_turn(svc: ModelService, req: ChatCompletionRequest) -> ChatPrompt:
    """The request's prompt, rendered and tokenized once (off the event loop when it is big work)."""
    return await svc.prepare(prepare_chat, svc, req, size=chat_size(req))


async def chat_turn(svc: ModelService, req: ChatCompletionRequest, ctx: RequestContext,
                    obs: GenerationObserver, prompt: ChatPrompt | None = None) -> AsyncIterator[TurnStep]:
    """The turn's steps (see the module docstring); the engine's slot is freed when the caller stops reading.
    ``prompt``: the request's prompt when the caller prepared it already (:func:`prepare_turn`: to know its
    length first, or to run several choices of one request over one preparation)."""
    if prompt is None:
        prompt = await prepare_turn(svc, req)
    gen_req = generation_request(req, prompt.tokens, prompt.grammar, ctx.request_id, svc.stop_markers,
                                 svc.stop_token_ids, defaults=svc.sampling.params)
    chunks = svc.engine.generate(gen_req)
    try:
        first = await first_chunk(chunks)
        stream = prompt.parser.stream()
        made_calls = False
        reasoning: list[str] = []
        held: list[str] = []  # a forced call's text the parser has not read as a call yet
        async for c in all_chunks(first, chunks):
            events = stream.feed(c.text) if c.text else []
            if c.finish_reason:
                events += stream.finish()
            if prompt.forced_call:
                events = _forced_call_events(events, held, final=bool(c.finish_reason) and not made_calls)
            for ev in events:
                if ev.tool_call is not None:
                    made_calls = True
                elif ev.reasoning is not None:
                    reasoning.append(ev.reasoning)
            if not c.finish_reason:
                yield TurnStep(events, c)
                continue
            obs.done(c)
            n_reasoning = len(svc.engine.tokenize("".join(reasoning), add_special=False)) if reasoning else 0
            finish = turn_finish(c.finish_reason, made_calls, stream.cut_call)
            yield TurnStep(events, c, finish, c.usage or Usage(), n_reasoning)
    finally:
        await chunks.aclose()


_NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)+)"')
_ARGS = re.compile(r'"(?:arguments|parameters)"\s*:\s*(.*)\Z', re.S)


def _forced_call_events(events: list[StreamEvent], held: list[str], final: bool) -> list[StreamEvent]:
    """A forced call's events: its grammar makes the whole answer a call, so no piece of it is content. Text the
    parser has not read as a call yet is held; when the answer ends without a call read (the token limit cut it
    inside its name or before its arguments), the call is reported from the held text as far as it got: its name
    and the arguments' text so far; cut before the name, it reports nothing."""
    out = [ev for ev in events if ev.content is None]
    held.extend(ev.content for ev in events if ev.content is not None)
    if final and held:
        text = "".join(held)
        name = _NAME.search(text)
        if name is not None:
            args = _ARGS.search(text, name.end())
            out.append(StreamEvent(tool_call={"index": 0, "id": new_call_id(), "type": "function", "function": {
                "name": json.loads(f'"{name.group(1)}"'), "arguments": args.group(1) if args else ""}}))
        held.clear()
    return out


async def whole_turn(steps: AsyncIterator[TurnStep]) -> WholeTurn:
    """Every step of a turn, collected (content is None when the turn was only tool calls)."""
    events: list[StreamEvent] = []
    kept: list[TurnStep] = []
    last: TurnStep | None = None
    async for step in steps:
        events.extend(step.events)
        kept.append(step)
        last = step
    assert last is not None and last.finish_reason is not None
    return WholeTurn(collect(events), last.finish_reason, last.usage or Usage(), last.reasoning_tokens, kept)


def usage_details(usage: Usage, reasoning_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage object for a chat turn: cached prompt tokens and reasoning tokens counted."""
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens, "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": reasoning_tokens}}
