"""``/v1/responses`` in the replica: the request (its whole conversation, resolved by the route) as one chat turn
(kronk/api/chat/turn.py), shaped as OpenAI's response object or its named SSE events (``event: <type>``, each
with its ``sequence_number``)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from kronk.api.chat.schemas import ChatCompletionRequest
from kronk.api.chat.turn import TurnStep, chat_turn
from kronk.api.responses.schemas import (
    FunctionCallItem,
    FunctionCallOutputItem,
    MessageItem,
    NamedFunction,
    ResponsesRequest,
)
from kronk.engine.protocol import Usage
from kronk.errors import InvalidRequest, KronkError
from kronk.parsers import StreamEvent
from kronk.serving.call import RequestContext
from kronk.serving.items import Item
from kronk.serving.service import ModelService
from kronk.telemetry.generation import GenerationObserver

# The request's sampling fields that the chat turn takes as they are (kronk's own beside OpenAI's).
SAMPLING = ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "repeat_penalty",
            "repeat_last_n", "seed", "stop", "logit_bias", "ignore_eos", "min_tokens", "repetition_guard",
            "keep_alive")
ID_PREFIXES = {"message": "msg", "reasoning": "rs", "function_call": "fc"}
# A chat error's param, as this family names the field.
PARAMS = {"messages": "input", "max_completion_tokens": "max_output_tokens", "max_tokens": "max_output_tokens",
          "response_format": "text.format", "response_format.json_schema.schema": "text.format.schema"}


def event(kind: str, seq: int, fields: dict[str, Any]) -> str:
    """One named SSE event."""
    data = json.dumps({"type": kind, "sequence_number": seq, **fields}, ensure_ascii=False, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n"


def chat_messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The conversation as chat messages: ``instructions`` first (a system message), a function call joins the
    assistant message before it (one turn: text, then calls), its output is a tool message named after it;
    reasoning items are left out."""
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    names: dict[str, str] = {}
    for item in req.input:
        if isinstance(item, MessageItem):
            messages.append({"role": item.role, "content": item.text()})
        elif isinstance(item, FunctionCallItem):
            names[item.call_id] = item.name
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                if not last["content"]:
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            msg = {"role": "tool", "tool_call_id": item.call_id, "content": item.text()}
            if item.call_id in names:
                msg["name"] = names[item.call_id]
            messages.append(msg)
    return messages


def chat_request(req: ResponsesRequest) -> ChatCompletionRequest:
    """The chat turn the response runs: its messages, tools, tool choice, text format, token limit, sampling."""
    body: dict[str, Any] = {"model": req.model, "messages": chat_messages(req), "stream": req.stream}
    body.update({k: getattr(req, k) for k in SAMPLING if getattr(req, k) is not None})
    if req.token_limit is not None:
        body["max_completion_tokens"] = req.token_limit
    if req.tools:
        body["tools"] = [{"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)}
                         for t in req.tools]
        # unset: as on chat (a forced call is one call; parallel_tool_calls: true lets it make several)
        body["parallel_tool_calls"] = req.parallel_tool_calls
    if isinstance(req.tool_choice, NamedFunction):
        body["tool_choice"] = {"type": "function", "function": {"name": req.tool_choice.name}}
    elif req.tool_choice is not None:
        body["tool_choice"] = req.tool_choice
    fmt = req.text_format
    if fmt is not None:
        body["response_format"] = {"type": fmt.type} if fmt.type != "json_schema" else {
            "type": "json_schema", "json_schema": {"name": fmt.name or "response", "schema": fmt.schema_,
                                                   "strict": fmt.strict, "description": fmt.description}}
    if req.reasoning is not None and req.reasoning.effort is not None:
        body["reasoning_effort"] = req.reasoning.effort  # the template reads it (kronk/api/chat/prompt.py)
    try:
        return ChatCompletionRequest.model_validate(body, context={"limits": req._limits} if req._limits else None)
    except ValidationError as e:  # validated at the route already; whatever is left is the client's 400
        err = e.errors()[0]
        raise InvalidRequest(f"the conversation cannot be run: {err.get('msg', 'invalid value')}",
                             param="input") from None


def _client_param(e: KronkError) -> KronkError:
    """A chat error told with this family's field names (input, max_output_tokens, text.format)."""
    if e.param in PARAMS:
        e.param = PARAMS[e.param]
        e.message = e.message.replace("max_completion_tokens", "max_output_tokens").replace(
            "the messages", "the input")
    return e


def response_shell(svc: ModelService, req: ResponsesRequest, rid: str, created: int) -> dict[str, Any]:
    """The response object before its output: what the request asked for, echoed as OpenAI does."""
    fmt = req.text_format
    tool_choice: Any = req.tool_choice.model_dump() if isinstance(req.tool_choice, NamedFunction) else (
        req.tool_choice or "auto")
    sampling = svc.sampling.params
    return {
        "id": rid, "object": "response", "created_at": created, "status": "in_progress", "model": svc.model_id,
        "output": [], "usage": None, "error": None, "incomplete_details": None,
        "previous_response_id": req.previous_response_id, "instructions": req.instructions,
        "tools": [t.model_dump(by_alias=True) for t in req.tools or []], "tool_choice": tool_choice,
        "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
        "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
        "temperature": sampling.temperature if req.temperature is None else req.temperature,
        "top_p": sampling.top_p if req.top_p is None else req.top_p,
        "max_output_tokens": req.token_limit, "store": req.store, "metadata": req.metadata or {},
        "reasoning": {"effort": req.reasoning.effort if req.reasoning else None, "summary": None},
        "truncation": req.truncation or "disabled", "user": req.user, "background": False,
    }


def response_usage(usage: Usage, reasoning_tokens: int) -> dict[str, Any]:
    """OpenAI's usage object for a response: the prompt tokens that came from the slot's cache, and the ones
    prefilled now (written to the cache)."""
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens,
                                     "cache_write_tokens": max(0, usage.prompt_tokens - usage.cached_tokens)},
            "output_tokens": usage.completion_tokens, "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": usage.total_tokens}


class OutputBuilder:
    """A turn's parsed pieces as output items (reasoning, message, function_call, in the order they come) and,
    when streaming, as the events that build them. A message item opens at the first text that is not blank
    (blank text before a call is left out, as a whole-text answer leaves it: kronk.parsers.collect)."""

    def __init__(self, request_id: str, emit: bool):
        self.request_id, self.emit, self.seq = request_id, emit, 0  # item ids: <prefix>_<request id>_<index>
        self.items: list[dict[str, Any]] = []
        self.events: list[str] = []
        self.open: dict[str, Any] | None = None  # the item being written (the last of items)
        self.text: list[str] = []  # the open message's or reasoning's text so far
        self.blank = ""  # blank text not yet given to a message
        self.calls: dict[int, dict[str, Any]] = {}  # the parser's call index -> its item

    def add(self, kind: str, **fields: Any) -> None:
        if self.emit:
            self.events.append(event(kind, self.seq, fields))
            self.seq += 1

    def take(self) -> str:
        out, self.events = "".join(self.events), []
        return out

    @property
    def index(self) -> int:
        return len(self.items) - 1

    def _open(self, item: dict[str, Any]) -> None:
        self.close()
        item["id"] = f"{ID_PREFIXES[item['type']]}_{self.request_id}_{len(self.items)}"
        self.items.append(item)
        self.open = item
        self.add("response.output_item.added", output_index=self.index, item=item)
        if item["type"] == "message":
            self.add("response.content_part.added", item_id=item["id"], output_index=self.index, content_index=0,
                     part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
        elif item["type"] == "reasoning":
            self.add("response.content_part.added", item_id=item["id"], output_index=self.index, content_index=0,
                     part={"type": "reasoning_text", "text": ""})

    def _text(self, piece: str) -> None:
        item = self.open
        assert item is not None
        self.text.append(piece)
        kind = "response.output_text.delta" if item["type"] == "message" else "response.reasoning_text.delta"
        extra = {"logprobs": []} if item["type"] == "message" else {}
        self.add(kind, item_id=item["id"], output_index=self.index, content_index=0, delta=piece, **extra)

    def feed(self, ev: StreamEvent) -> None:
        if ev.content is not None:
            if self.open is not None and self.open["type"] == "message":
                self._text(ev.content)
            elif not (self.blank + ev.content).strip():
                self.blank += ev.content
            else:
                self._open({"type": "message", "status": "in_progress", "role": "assistant", "content": []})
                piece, self.blank = self.blank + ev.content, ""
                self._text(piece)
        elif ev.reasoning is not None:
            if self.open is None or self.open["type"] != "reasoning":
                self._open({"type": "reasoning", "summary": [], "content": [], "status": "in_progress"})
            self._text(ev.reasoning)
        elif ev.tool_call is not None:
            frag = ev.tool_call
            fn = frag.get("function", {})
            if "id" in frag:
                item = {"type": "function_call", "status": "in_progress", "call_id": frag["id"],
                        "name": fn.get("name", ""), "arguments": ""}
                self._open(item)
                self.calls[frag.get("index", len(self.calls))] = item
            item = self.calls.get(frag.get("index", -1)) or self.open
            piece = fn.get("arguments") or ""
            if item is None or item["type"] != "function_call" or not piece:
                return
            item["arguments"] += piece
            if item is self.open:
                self.add("response.function_call_arguments.delta", item_id=item["id"], output_index=self.index,
                         delta=piece)

    def close(self, status: str = "completed") -> None:
        item, self.open = self.open, None
        if item is None:
            return
        item["status"] = status
        i = self.items.index(item)
        if item["type"] == "function_call":
            self.add("response.function_call_arguments.done", item_id=item["id"], output_index=i,
                     arguments=item["arguments"], name=item["name"])
        else:
            text, self.text = "".join(self.text), []
            if item["type"] == "message":
                part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
                self.add("response.output_text.done", item_id=item["id"], output_index=i, content_index=0,
                         text=text, logprobs=[])
            else:
                part = {"type": "reasoning_text", "text": text}
                self.add("response.reasoning_text.done", item_id=item["id"], output_index=i, content_index=0,
                         text=text)
            item["content"] = [part]
            self.add("response.content_part.done", item_id=item["id"], output_index=i, content_index=0, part=part)
        self.add("response.output_item.done", output_index=i, item=item)

    def finish(self, status: str) -> None:
        """The turn ended: a turn without calls always has a message (its text may be blank or empty)."""
        if not self.calls and not any(i["type"] == "message" for i in self.items):
            self._open({"type": "message", "status": "in_progress", "role": "assistant", "content": []})
            if self.blank:
                self._text(self.blank)
        self.close("incomplete" if status == "incomplete" else "completed")


def finished(shell: dict[str, Any], out: OutputBuilder, step: TurnStep) -> dict[str, Any]:
    """The whole response object once the turn's last step is in."""
    incomplete = step.finish_reason == "length"
    out.finish("incomplete" if incomplete else "completed")
    return {**shell, "status": "incomplete" if incomplete else "completed", "output": out.items,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "usage": response_usage(step.usage or Usage(), step.reasoning_tokens)}


async def serve_responses(svc: ModelService, req: ResponsesRequest, ctx: RequestContext,
                          obs: GenerationObserver) -> AsyncIterator[Item]:
    rid = "resp_" + ctx.request_id
    shell = response_shell(svc, req, rid, int(time.time()))
    steps = chat_turn(svc, chat_request(req), ctx, obs)
    try:
        try:
            first = await steps.__anext__()  # a request error raises here, before any byte
        except KronkError as e:
            raise _client_param(e) from None
        out = OutputBuilder(ctx.request_id, emit=req.stream)
        if req.stream:
            out.add("response.created", response=shell)
            out.add("response.in_progress", response=shell)
        step: TurnStep | None = first
        while step is not None:
            for ev in step.events:
                out.feed(ev)
            if step.finish_reason:
                final = finished(shell, out, step)
                if not req.stream:
                    yield final
                    return
                out.add("response.completed" if final["status"] == "completed" else "response.incomplete",
                        response=final)
            if req.stream:
                chunk = out.take()
                if chunk:
                    yield chunk
            step = await anext(steps, None)
    finally:
        await steps.aclose()
