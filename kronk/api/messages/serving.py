"""``/v1/messages`` in the replica: one chat turn (kronk/api/chat/turn.py) shaped as Anthropic's message or its
event stream; ``/v1/messages/count_tokens``: the same prompt prepared, not generated, and counted."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from kronk.api.chat.prompt import chat_size, prepare_chat
from kronk.api.chat.turn import TurnStep, chat_turn, prepare_turn
from kronk.api.messages.schemas import CountTokensRequest, MessagesRequest
from kronk.engine.protocol import Usage
from kronk.parsers import StreamEvent
from kronk.serving.call import RequestContext
from kronk.serving.items import Item
from kronk.telemetry.generation import GenerationObserver

if TYPE_CHECKING:
    from kronk.serving.service import ModelService

STOP_REASONS = {"tool_calls": "tool_use", "length": "max_tokens"}


def event(name: str, data: dict[str, Any]) -> str:
    """One server-sent event as Anthropic writes it: its type as the event name and in the data."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


def signature(thinking: str) -> str:
    """A thinking block's signature: opaque to clients (here, a digest of the thinking; nothing checks it)."""
    return "kronk-" + hashlib.sha256(thinking.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def tool_use_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's input object (a call cut by the token limit may hold incomplete JSON: then what is known, {})."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class Blocks:
    """A turn's parsed pieces as Anthropic content blocks, in order: a new block whenever the kind changes (text,
    thinking), each tool call a tool_use block of its own. :meth:`feed` and :meth:`finish` return the stream's
    ``content_block_*`` events for what they were given; :attr:`blocks` holds the blocks (tool inputs filled in
    by :meth:`finish`). Whitespace that would open a text block is held until text follows (a tool call's
    surrounding whitespace makes no block)."""

    def __init__(self) -> None:
        self.blocks: list[dict[str, Any]] = []
        self.open: str | None = None  # the type of the block still open
        self.held = ""
        self.args: dict[int, list[str]] = {}  # tool_use block index -> its input's JSON text, in pieces
        self.by_call: dict[int, int] = {}  # the parser's call index -> tool_use block index

    def _start(self, block: dict[str, Any]) -> list[str]:
        out = self._close()
        self.held = ""
        self.blocks.append(block)
        self.open = block["type"]
        return [*out, event("content_block_start", {"type": "content_block_start", "index": len(self.blocks) - 1,
                                                     "content_block": dict(block)})]

    def _close(self) -> list[str]:
        if self.open is None:
            return []
        i, block, out = len(self.blocks) - 1, self.blocks[-1], []
        if self.open == "thinking":
            block["signature"] = signature(block["thinking"])
            out.append(self._delta(i, {"type": "signature_delta", "signature": block["signature"]}))
        self.open = None
        return [*out, event("content_block_stop", {"type": "content_block_stop", "index": i})]

    @staticmethod
    def _delta(index: int, delta: dict[str, Any]) -> str:
        return event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})

    def feed(self, ev: StreamEvent) -> list[str]:
        out: list[str] = []
        if ev.tool_call is not None:
            call, fn = ev.tool_call, ev.tool_call.get("function") or {}
            if "id" in call:
                out += self._start({"type": "tool_use", "id": tool_use_id(call["id"]), "name": fn.get("name", ""),
                                    "input": {}})
                self.by_call[call.get("index", 0)] = len(self.blocks) - 1
                self.args[len(self.blocks) - 1] = []
            i = self.by_call.get(call.get("index", 0))
            piece = fn.get("arguments") or ""
            if i is not None and piece:
                self.args[i].append(piece)
                out.append(self._delta(i, {"type": "input_json_delta", "partial_json": piece}))
        elif ev.reasoning is not None:
            if self.open != "thinking":
                out += self._start({"type": "thinking", "thinking": "", "signature": ""})
            self.blocks[-1]["thinking"] += ev.reasoning
            out.append(self._delta(len(self.blocks) - 1, {"type": "thinking_delta", "thinking": ev.reasoning}))
        elif ev.content:
            text = ev.content
            if self.open != "text":
                if not (self.held + text).strip():
                    self.held += text
                    return out
                text = self.held + text
                out += self._start({"type": "text", "text": ""})
            self.blocks[-1]["text"] += text
            out.append(self._delta(len(self.blocks) - 1, {"type": "text_delta", "text": text}))
        return out

    def finish(self) -> list[str]:
        out = self._close()
        for i, pieces in self.args.items():
            self.blocks[i]["input"] = tool_input("".join(pieces))
        return out


def merged(events: list[StreamEvent]) -> list[StreamEvent]:
    """Neighbouring text (and thinking) pieces of one step as one piece: one delta event each."""
    out: list[StreamEvent] = []
    for ev in events:
        prev = out[-1] if out else None
        if prev is not None and ev.content is not None and prev.content is not None:
            prev.content += ev.content
        elif prev is not None and ev.reasoning is not None and prev.reasoning is not None:
            prev.reasoning += ev.reasoning
        else:
            out.append(StreamEvent(content=ev.content, reasoning=ev.reasoning, tool_call=ev.tool_call))
    return out


def stop_of(step: TurnStep, req: MessagesRequest) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of the turn's last step: the engine names the stop string that ended it."""
    reason = step.finish_reason or "stop"
    if reason in STOP_REASONS:
        return STOP_REASONS[reason], None
    match = step.chunk.stop_match
    if match is not None and match in (req.stop_sequences or ()):
        return "stop_sequence", match
    return "end_turn", None


def usage_of(u: Usage) -> dict[str, int]:
    """Anthropic's usage: ``input_tokens`` are the prompt tokens prefilled (not reused from the slot's cache),
    ``cache_read_input_tokens`` the reused ones; nothing is written to a cache on request."""
    cached = min(u.cached_tokens, u.prompt_tokens)
    return {"input_tokens": u.prompt_tokens - cached, "output_tokens": u.completion_tokens,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


async def serve_messages(svc: ModelService, req: MessagesRequest, ctx: RequestContext,
                         obs: GenerationObserver) -> AsyncIterator[Item]:
    mid = "msg_" + ctx.request_id
    prompt = await prepare_turn(svc, req.chat)  # message_start reports its length before the turn's usage
    steps = chat_turn(svc, req.chat, ctx, obs, prompt)
    blocks = Blocks()
    try:
        if not req.stream:
            last: TurnStep | None = None
            async for step in steps:
                for ev in step.events:
                    blocks.feed(ev)
                last = step
            assert last is not None and last.finish_reason is not None
            blocks.finish()
            reason, seq = stop_of(last, req)
            yield {"id": mid, "type": "message", "role": "assistant", "model": svc.model_id,
                   "content": blocks.blocks, "stop_reason": reason, "stop_sequence": seq,
                   "usage": usage_of(last.usage or Usage())}
            return

        started = False
        async for step in steps:
            out: list[str] = []
            if not started:  # the first step: the prompt is prepared (an error would have raised before it)
                started = True
                out.append(event("message_start", {"type": "message_start", "message": {
                    "id": mid, "type": "message", "role": "assistant", "model": svc.model_id, "content": [],
                    "stop_reason": None, "stop_sequence": None,
                    "usage": {"input_tokens": len(prompt.tokens), "output_tokens": 0,
                              "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}}))
                out.append(event("ping", {"type": "ping"}))
            for ev in merged(step.events):
                out += blocks.feed(ev)
            if step.finish_reason:
                out += blocks.finish()
                reason, seq = stop_of(step, req)
                out.append(event("message_delta", {"type": "message_delta",
                                                   "delta": {"stop_reason": reason, "stop_sequence": seq},
                                                   "usage": usage_of(step.usage or Usage())}))
                out.append(event("message_stop", {"type": "message_stop"}))
            if out:
                yield "".join(out)
    finally:
        await steps.aclose()


async def serve_count_tokens(svc: ModelService, req: CountTokensRequest, ctx: RequestContext,
                             obs: GenerationObserver) -> AsyncIterator[Item]:
    """The prompt /v1/messages would prefill for this conversation, prepared exactly as a turn prepares it
    (template, tools, grammar checks), and counted; nothing is generated."""
    chat = req.chat
    prompt = await svc.prepare(prepare_chat, svc, chat, size=chat_size(chat))
    yield {"input_tokens": len(prompt.tokens)}
