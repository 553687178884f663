"""A chat request's prompt, prepared once in the replica: messages (and tools) rendered by the model's chat
template, tokenized, the grammar a forced call or a response format asks for, and the parser its output is read
with."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from kronk.api.chat.schemas import ChatCompletionRequest
from kronk.api.generation import format_cost, format_grammar
from kronk.api.limits import check_completion_fits
from kronk.engine.grammar import json_schema_grammar
from kronk.errors import ContextLengthExceeded, InvalidRequest, KronkError, Unsupported
from kronk.parsers import OutputParser, render_tools_system_prompt, tool_call_grammar_schema
from kronk.parsers.output import output_parser
from kronk.serving.service import INLINE_PREPARE_CHARS, ModelService

log = logging.getLogger("kronk.api")


@dataclass
class ChatPrompt:
    tokens: list[int]
    parser: OutputParser
    grammar: str | None
    forced_call: bool = False  # tool_choice required / named: the grammar makes the whole answer a call
    text: str = ""  # the rendered prompt the tokens are of


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
                kwargs: dict[str, Any], continue_final: bool = False) -> str:
    """The chat template over client data: whatever it cannot render (a value of a type it does not expect, in
    chat_template_kwargs or the messages) is the client's 400, never a 500. ``continue_final``: the last message
    is an assistant message the model goes on writing (a prefill): the text ends where that message's content
    does, without the template's end of turn."""
    try:
        text = svc.engine.apply_chat_template(messages, tools=tools, add_generation_prompt=not continue_final,
                                              **kwargs)
    except KronkError:
        raise
    except Exception as e:
        raise InvalidRequest(f"the model's chat template could not render this request ({type(e).__name__}: "
                             f"{str(e)[:200]})", param="chat_template_kwargs" if kwargs else "messages") from e
    return continued(text, messages[-1]["content"]) if continue_final else text


def continued(text: str, final: str) -> str:
    """``text`` cut right after the last occurrence of the final message's content (templates may strip its
    trailing whitespace)."""
    for needle in (final, final.rstrip()):
        at = text.rfind(needle) if needle else -1
        if at >= 0:
            return text[:at + len(needle)]
    raise InvalidRequest("the model's chat template does not render the final assistant message as it was sent, "
                         "so it cannot be continued", param="messages")


def chat_size(req: ChatCompletionRequest) -> int:
    """How much preparing ``req`` costs, in characters (ModelService.prepare): its messages' text, the tools'
    definitions, and any schema to compile counted as big."""
    size = sum(len(m.text()) for m in req.messages) + 512 * len(req.tools or [])
    if req.tools and req.tool_choice not in (None, "auto", "none"):
        size += INLINE_PREPARE_CHARS  # a forced call compiles its arguments' schemas into a grammar
    return size + format_cost(req.response_format)


def template_kwargs(svc: ModelService, req: ChatCompletionRequest, forced: bool) -> dict[str, Any]:
    """What the chat template reads beside messages and tools: the client's ``chat_template_kwargs``, then
    ``reasoning_effort`` and ``enable_thinking`` when sent as request fields (Qwen3's and gpt-oss's templates read
    them). A structured answer (a response format or a forced call) turns thinking off unless the request asks
    for it: a grammar leaves no room for a ``<think>`` block."""
    kwargs = dict(req.chat_template_kwargs or {})
    extra = req.model_extra or {}
    effort = extra.get("reasoning_effort")
    if isinstance(effort, str) and "reasoning_effort" not in kwargs:
        kwargs["reasoning_effort"] = effort
    thinking = extra.get("enable_thinking")
    if isinstance(thinking, bool) and "enable_thinking" not in kwargs:
        kwargs["enable_thinking"] = thinking
    if forced and svc.reasoning and "enable_thinking" not in kwargs:
        kwargs["enable_thinking"] = False
    return kwargs


def prepare_chat(svc: ModelService, req: ChatCompletionRequest, fit: bool = True) -> ChatPrompt:
    """Render the chat template and tokenize, once (blocking: run it off the event loop). ``fit=False``: the
    prompt even when the context cannot hold it (``/v1/apply-template`` shows it; nothing generates from it)."""
    engine = svc.engine
    messages = chat_messages(svc, req)
    tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
    choice = req.tool_choice.model_dump() if hasattr(req.tool_choice, "model_dump") else (req.tool_choice or "auto")
    use_tools = bool(tools) and choice != "none"
    if use_tools and choice == "auto" and not svc.template_tools and not svc.prompt_tools:
        # The template cannot render tools and the model is not known to call tools from a prompt: describing
        # them would only make a small model recite them (OpenWebUI sends ~36 on every turn). Left out; a
        # forced call (required / a named function) still gets them, grammar-constrained (docs/api.md).
        use_tools = False
    grammar = format_grammar(req.response_format)
    parser_name = svc.tool_parser
    template_tools = None
    forced = False
    if use_tools:
        schema = tool_call_grammar_schema(tools, choice, parallel=bool(req.parallel_tool_calls))
        forced = schema is not None
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
    kwargs = template_kwargs(svc, req, forced=grammar is not None)
    cont = req.continue_final_message
    if cont and (messages[-1]["role"] != "assistant" or not messages[-1]["content"] or req.messages[-1].tool_calls):
        raise InvalidRequest("continue_final_message needs a last assistant message with text content and no "
                             "tool calls", param="messages")
    text = render_chat(svc, messages, template_tools, kwargs, cont)
    tokens = engine.tokenize(text)
    n_ctx = svc.n_ctx
    if use_tools and choice == "auto" and n_ctx and len(tokens) + (req.token_limit or 1) > n_ctx:
        # Clients such as OpenWebUI attach dozens of tools to every turn; when their descriptions
        # alone overflow the context (or leave no room for the token limit asked for), answer without
        # tools rather than refuse the chat.
        log.warning("%s: %d tools do not fit the context; answering without them", svc.model_id, len(tools))
        use_tools, grammar = False, format_grammar(req.response_format)
        text = render_chat(svc, chat_messages(svc, req), None, kwargs, cont)
        tokens = engine.tokenize(text)
    if not fit:
        n_ctx = 0
    if n_ctx and len(tokens) >= n_ctx:
        raise ContextLengthExceeded(len(tokens), n_ctx)
    check_completion_fits(len(tokens), n_ctx, req.token_limit, prompt_part="the messages",
                          param="max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens")
    parser = output_parser(parser_name, tools if use_tools else None, reasoning=svc.reasoning,
                           starts_in_reasoning=svc.reasoning and text.rstrip().endswith("<think>"),
                           parallel_tool_calls=req.parallel_tool_calls)
    return ChatPrompt(tokens, parser, grammar, forced_call=forced and use_tools, text=text)
