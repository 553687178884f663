"""Chat completions in the replica: messages -> prompt tokens (rendered and tokenized once) -> engine -> items."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from kronk.api.chat.schemas import ChatCompletionRequest
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
from kronk.engine.grammar import json_schema_grammar
from kronk.errors import ContextLengthExceeded, InvalidRequest, KronkError, Unsupported
from kronk.parsers import (
    OutputParser,
    ReasoningParser,
    get_tool_parser,
    render_tools_system_prompt,
    tool_call_grammar_schema,
)
from kronk.serving.call import RequestContext
from kronk.serving.items import SSE_DONE, Item, sse
from kronk.serving.service import INLINE_PREPARE_CHARS, ModelService
from kronk.telemetry.generation import GenerationObserver

log = logging.getLogger("kronk.api")


@dataclass
class ChatPrompt:
    tokens: list[int]
    parser: OutputParser
    grammar: str | None


def chat_messages(svc: ModelService, req: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The messages as the chat template reads them (text only; tool calls with object arguments)."""
    out = []
    for m in req.messages:
        if m.content is not None and not isinstance(m.content, str):
            other = [p.type for p in m.content if not hasattr(p, "text")]
            if other:
                raise Unsupported(f"model {svc.model_id} reads text only; {other[0]} content is not supported",
                                  param="messages")
        d: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.role == "function":
            d["role"] = "tool"
        if m.name:
            d["name"] = m.name
        if m.tool_call_id:
            d["tool_call_id"] = m.tool_call_id
        if m.tool_calls:
            calls = []
            for c in m.tool_calls:
                args = c.function.arguments
                if isinstance(args, str):
                    try:
                        args = json.loads(args) if args.strip() else {}
                    except json.JSONDecodeError:
                        pass
                calls.append({"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": args}})
            d["tool_calls"] = calls
        out.append(d)
    return out


def render_chat(svc: ModelService, messages: list[dict[str, Any]], tools: list[dict] | None,
                kwargs: dict[str, Any]) -> str:
    """The chat template over client data: whatever it cannot render (a value of a type it does not expect, in
    chat_template_kwargs or the messages) is the client's 400, never a 500."""
    try:
        return svc.engine.apply_chat_template(messages, tools=tools, add_generation_prompt=True, **kwargs)
    except KronkError:
        raise
    except Exception as e:
        raise InvalidRequest(f"the model's chat template could not render this request ({type(e).__name__}: "
                             f"{str(e)[:200]})", param="chat_template_kwargs" if kwargs else "messages") from e


def chat_size(req: ChatCompletionRequest) -> int:
    """How much preparing ``req`` costs, in characters (ModelService.prepare): its messages' text, the tools'
    definitions, and any schema to compile counted as big."""
    size = sum(len(m.text()) for m in req.messages) + 512 * len(req.tools or [])
    if req.tools and req.tool_choice not in (None, "auto", "none"):
        size += INLINE_PREPARE_CHARS  # a forced call compiles its arguments' schemas into a grammar
    return size + format_cost(req.response_format)


def prepare_chat(svc: ModelService, req: ChatCompletionRequest) -> ChatPrompt:
    """Render the chat template and tokenize, once (blocking: run it off the event loop)."""
    engine = svc.engine
    messages = chat_messages(svc, req)
    tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
    choice = req.tool_choice.model_dump() if hasattr(req.tool_choice, "model_dump") else (req.tool_choice or "auto")
    use_tools = bool(tools) and choice != "none"
    grammar = format_grammar(req.response_format)
    parser_name = svc.tool_parser
    template_tools = None
    if use_tools:
        schema = tool_call_grammar_schema(tools, choice, parallel=bool(req.parallel_tool_calls))
        if schema is not None:  # a call is forced: constrain the reply to one, read it as bare JSON
            grammar, parser_name = json_schema_grammar(schema, param="tools"), "generic"
        if svc.template_tools and schema is None:
            template_tools = tools
        else:
            sys_text = render_tools_system_prompt(tools, choice)
            if messages and messages[0]["role"] == "system":
                messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + sys_text}
            else:
                messages.insert(0, {"role": "system", "content": sys_text})
            if schema is None:
                parser_name = "generic" if parser_name not in ("hermes",) else parser_name
    kwargs = req.chat_template_kwargs or {}
    text = render_chat(svc, messages, template_tools, kwargs)
    tokens = engine.tokenize(text)
    n_ctx = svc.n_ctx
    if use_tools and choice == "auto" and n_ctx and len(tokens) + (req.token_limit or 1) > n_ctx:
        # Clients such as OpenWebUI attach dozens of tools to every turn; when their descriptions
        # alone overflow the context (or leave no room for the token limit asked for), answer without
        # tools rather than refuse the chat.
        log.warning("%s: %d tools do not fit the context; answering without them", svc.model_id, len(tools))
        use_tools, grammar = False, format_grammar(req.response_format)
        text = render_chat(svc, chat_messages(svc, req), None, kwargs)
        tokens = engine.tokenize(text)
    if n_ctx and len(tokens) >= n_ctx:
        raise ContextLengthExceeded(len(tokens), n_ctx)
    check_completion_fits(len(tokens), n_ctx, req.token_limit, prompt_part="the messages",
                          param="max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens")
    tool_parser = get_tool_parser(parser_name, [t["function"]["name"] for t in tools]) if use_tools else None
    starts_in_reasoning = svc.reasoning and text.rstrip().endswith("<think>")
    reasoning = ReasoningParser(starts_in_reasoning=starts_in_reasoning) if svc.reasoning else None
    return ChatPrompt(tokens, OutputParser(tools=tool_parser, reasoning=reasoning), grammar)


async def serve_chat(svc: ModelService, req: ChatCompletionRequest, ctx: RequestContext,
                     obs: GenerationObserver) -> AsyncIterator[Item]:
    prompt = await svc.prepare(prepare_chat, svc, req, size=chat_size(req))
    gen_req = generation_request(req, prompt.tokens, prompt.grammar, ctx.request_id, svc.stop_markers,
                                 svc.stop_token_ids, defaults=svc.sampling.params)
    rid, created = "chatcmpl-" + ctx.request_id, int(time.time())
    base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": svc.model_id,
            "system_fingerprint": svc.fingerprint}
    chunks = svc.engine.generate(gen_req)
    try:
        first = await first_chunk(chunks)
        if not req.stream:
            text, last = await whole_text(first, chunks)
            obs.done(last)
            parsed = prompt.parser.parse(text)
            msg: dict[str, Any] = {"role": "assistant", "content": parsed.content}
            if parsed.reasoning_content:
                msg["reasoning_content"] = parsed.reasoning_content
            finish = last.finish_reason
            if parsed.tool_calls:
                msg["tool_calls"] = [tc.to_dict() for tc in parsed.tool_calls]
                finish = "tool_calls"
            elif msg["content"] is None:
                msg["content"] = ""
            yield {"id": rid, "object": "chat.completion", "created": created, "model": svc.model_id,
                   "system_fingerprint": svc.fingerprint,
                   "choices": [{"index": 0, "message": msg, "finish_reason": finish, "logprobs": None}],
                   "usage": usage_dict(last.usage)}
            return

        stream = prompt.parser.stream()
        saw_tool = False
        out = [sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                          "logprobs": None, "finish_reason": None}]})]
        async for c in all_chunks(first, chunks):
            events = stream.feed(c.text) if c.text else []
            if c.finish_reason:
                events += stream.finish()
            for ev in events:
                if ev.tool_call is not None:
                    saw_tool = True
                    delta: dict[str, Any] = {"tool_calls": [ev.tool_call]}
                elif ev.reasoning is not None:
                    delta = {"reasoning_content": ev.reasoning}
                else:
                    delta = {"content": ev.content}
                out.append(sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                      "finish_reason": None}]}))
            if c.finish_reason:
                obs.done(c)
                finish = "tool_calls" if saw_tool else c.finish_reason
                final = {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]}
                if req.include_usage:
                    out.append(sse(final))
                    final = {**base, "choices": [], "usage": usage_dict(c.usage)}
                else:
                    final["usage"] = usage_dict(c.usage)
                out.append(sse(final))
                out.append(SSE_DONE)
            if out:
                yield "".join(out)
                out = []
    finally:
        await chunks.aclose()
