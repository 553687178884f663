"""The replica side of the OpenAI API: one model's engine behind chat, completions, embeddings.

``ModelService.run(kind, body)`` is what a model deployment (or the in-process
backend) calls. It yields *items*: for a streamed request, strings of ready-made
Server-Sent Events (several events may be coalesced in one item); for a
non-streamed request, one dict, the whole JSON response. Errors in the request are
raised (as KronkError) before the first item.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from kronk.api.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, SamplingFields
from kronk.engine.grammar import json_object_grammar, json_schema_grammar
from kronk.engine.protocol import Engine, GenerationChunk, GenerationRequest, SamplingParams, Usage
from kronk.errors import InvalidRequest, Unsupported
from kronk.parsers import (
    OutputParser,
    ReasoningParser,
    get_tool_parser,
    guess_tool_parser,
    render_tools_system_prompt,
    tool_call_grammar_schema,
)
from kronk.telemetry.generation import GenerationObserver
from kronk.telemetry.metrics import Recorder

ItemT = str | dict[str, Any]
log = logging.getLogger("kronk.api")

# Turn markers of common templates: if one shows up as text, the turn is over.
_TURN_MARKERS = ("<end_of_turn>", "<start_of_turn>", "<|im_end|>", "<|im_start|>", "<|eot_id|>",
                 "<|start_header_id|>", "<|end|>", "<|user|>", "<|endoftext|>", "</s>")


def sse(obj: dict[str, Any]) -> str:
    return "data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n\n"


def usage_dict(u: Usage | None) -> dict[str, Any]:
    u = u or Usage()
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.total_tokens, "prompt_tokens_details": {"cached_tokens": u.cached_tokens}}


def sampling_from(req: SamplingFields, grammar: str | None) -> SamplingParams:
    d = SamplingParams()
    bias = {int(k): (float("-inf") if v <= -100 else v) for k, v in (req.logit_bias or {}).items()}
    return SamplingParams(
        temperature=d.temperature if req.temperature is None else req.temperature,
        top_k=d.top_k if req.top_k is None else req.top_k,
        top_p=d.top_p if req.top_p is None else req.top_p,
        min_p=d.min_p if req.min_p is None else req.min_p,
        repeat_penalty=d.repeat_penalty if req.repeat_penalty is None else req.repeat_penalty,
        repeat_last_n=d.repeat_last_n if req.repeat_last_n is None else req.repeat_last_n,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        seed=req.seed, logit_bias=bias, grammar=grammar,
    )


def format_grammar(fmt: Any) -> str | None:
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return json_object_grammar()
    return json_schema_grammar(fmt.json_schema.schema_, param="response_format.json_schema.schema")


class ModelService:
    def __init__(self, engine: Engine, model_id: str, tool_parser: str | None = None,
                 reasoning: bool | None = None, system_fingerprint: str | None = None):
        self.engine = engine
        self.model_id = model_id
        template = getattr(getattr(engine, "template", None), "source", None)
        self.template_source = template
        self.tool_parser = tool_parser or guess_tool_parser(model_id, template)
        self.reasoning = reasoning if reasoning is not None else bool(template and "<think>" in template)
        self.fingerprint = system_fingerprint or f"kronk-{model_id}"
        # metrics of this replica's requests (a model deployment replaces it with one tagged by replica)
        self.recorder = Recorder("llm", "local", model=model_id)
        # A turn marker ends the answer: as a special token (it renders as no text) or as text.
        self.stop_markers: list[str] = []
        self.stop_token_ids: list[int] = []
        for marker in (m for m in _TURN_MARKERS if template and m in template):
            toks = engine.tokenize(marker, add_special=False, parse_special=True)
            if len(toks) == 1:
                self.stop_token_ids.append(toks[0])
            self.stop_markers.append(marker)

    async def run(self, kind: str, body: dict[str, Any], ctx: dict[str, Any] | None = None) -> AsyncIterator[ItemT]:
        """``ctx``: the request context from the front end (``request_id``, ``traceparent``)."""
        obs = GenerationObserver(self.recorder, self.model_id, kind, ctx)
        error: BaseException | None = None
        try:
            if kind == "chat":
                gen = self.chat(ChatCompletionRequest.model_validate(body), obs)
            elif kind == "completions":
                gen = self.completions(CompletionRequest.model_validate(body), obs)
            elif kind == "embeddings":
                gen = self.embeddings(EmbeddingRequest.model_validate(body), obs)
            else:
                raise InvalidRequest(f"unknown request kind {kind!r}")
            async for item in gen:
                yield item
        except BaseException as e:
            error = e
            raise
        finally:
            obs.end(error)

    # ------------------------------------------------------------------ chat
    def _chat_messages(self, req: ChatCompletionRequest) -> list[dict[str, Any]]:
        out = []
        for m in req.messages:
            if m.content is not None and not isinstance(m.content, str):
                other = [p.type for p in m.content if not hasattr(p, "text")]
                if other:
                    raise Unsupported(f"model {self.model_id} reads text only; {other[0]} content is not supported",
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
                    calls.append({"id": c.id, "type": "function",
                                  "function": {"name": c.function.name, "arguments": args}})
                d["tool_calls"] = calls
            out.append(d)
        return out

    def _chat_prompt(self, req: ChatCompletionRequest) -> tuple[str, OutputParser, str | None]:
        messages = self._chat_messages(req)
        tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
        choice = req.tool_choice.model_dump() if hasattr(req.tool_choice, "model_dump") else (req.tool_choice or "auto")
        use_tools = bool(tools) and choice != "none"
        grammar = format_grammar(req.response_format)
        parser_name = self.tool_parser
        template_tools = None
        if use_tools:
            schema = tool_call_grammar_schema(tools, choice, parallel=bool(req.parallel_tool_calls))
            if schema is not None:  # a call is forced: constrain the reply to one, read it as bare JSON
                grammar, parser_name = json_schema_grammar(schema, param="tools"), "generic"
            if self.template_source and "tools" in self.template_source and schema is None:
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
        prompt = self.engine.apply_chat_template(messages, tools=template_tools, add_generation_prompt=True, **kwargs)
        if use_tools and choice == "auto" and self._too_long(prompt):
            # Clients such as OpenWebUI attach dozens of tools to every turn; when their descriptions
            # alone overflow the context, answer without tools rather than refuse the chat.
            log.warning("%s: %d tools do not fit the context; answering without them", self.model_id, len(tools))
            use_tools, grammar = False, format_grammar(req.response_format)
            prompt = self.engine.apply_chat_template(self._chat_messages(req), add_generation_prompt=True, **kwargs)
        tool_parser = get_tool_parser(parser_name, [t["function"]["name"] for t in tools]) if use_tools else None
        starts_in_reasoning = self.reasoning and prompt.rstrip().endswith("<think>")
        reasoning = ReasoningParser(starts_in_reasoning=starts_in_reasoning) if self.reasoning else None
        return prompt, OutputParser(tools=tool_parser, reasoning=reasoning), grammar

    def _too_long(self, prompt: str) -> bool:
        n_ctx = self.engine.stats().n_ctx_slot
        return bool(n_ctx) and len(self.engine.tokenize(prompt)) >= n_ctx

    def _request(self, req: SamplingFields, prompt: str | list[int], grammar: str | None,
                 extra_stops: list[str], parse_special: bool) -> GenerationRequest:
        if req.logprobs:
            raise Unsupported("logprobs are not supported by this server", param="logprobs")
        limit = getattr(req, "token_limit", None)
        return GenerationRequest(
            prompt=prompt, sampling=sampling_from(req, grammar), max_tokens=limit,
            min_tokens=req.min_tokens, ignore_eos=req.ignore_eos, stop=req.stop_list + extra_stops,
            request_id=uuid.uuid4().hex, parse_special=parse_special,
        )

    async def chat(self, req: ChatCompletionRequest, obs: GenerationObserver | None = None) -> AsyncIterator[ItemT]:
        prompt, parser, grammar = self._chat_prompt(req)
        gen_req = self._request(req, prompt, grammar, self.stop_markers, parse_special=True)
        gen_req.stop_token_ids = list(self.stop_token_ids)
        rid, created = "chatcmpl-" + gen_req.request_id, int(time.time())
        base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.model_id,
                "system_fingerprint": self.fingerprint}
        chunks = self.engine.generate(gen_req)
        try:
            first = await _first(chunks)
            if not req.stream:
                text, last = await _collect(first, chunks)
                if obs is not None:
                    obs.done(last)
                parsed = parser.parse(text)
                msg: dict[str, Any] = {"role": "assistant", "content": parsed.content}
                if parsed.reasoning_content:
                    msg["reasoning_content"] = parsed.reasoning_content
                finish = last.finish_reason
                if parsed.tool_calls:
                    msg["tool_calls"] = [tc.to_dict() for tc in parsed.tool_calls]
                    finish = "tool_calls"
                elif msg["content"] is None:
                    msg["content"] = ""
                yield {"id": rid, "object": "chat.completion", "created": created, "model": self.model_id,
                       "system_fingerprint": self.fingerprint,
                       "choices": [{"index": 0, "message": msg, "finish_reason": finish, "logprobs": None}],
                       "usage": usage_dict(last.usage)}
                return

            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            stream = parser.stream()
            saw_tool = False
            out = [sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                              "logprobs": None, "finish_reason": None}]})]
            async for c in _rest(first, chunks, include_first=True):
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
                    if obs is not None:
                        obs.done(c)
                    finish = "tool_calls" if saw_tool else c.finish_reason
                    final = {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}]}
                    if include_usage:
                        out.append(sse(final))
                        final = {**base, "choices": [], "usage": usage_dict(c.usage)}
                    else:
                        final["usage"] = usage_dict(c.usage)
                    out.append(sse(final))
                    out.append("data: [DONE]\n\n")
                if out:
                    yield "".join(out)
                    out = []
        finally:
            await chunks.aclose()

    # ------------------------------------------------------------------ completions
    async def completions(self, req: CompletionRequest,
                          obs: GenerationObserver | None = None) -> AsyncIterator[ItemT]:
        if req.suffix:
            raise Unsupported("suffix (fill-in-the-middle) is not supported", param="suffix")
        prompt = req.prompt
        gen_req = self._request(req, prompt, format_grammar(req.response_format), [], parse_special=False)
        rid, created = "cmpl-" + gen_req.request_id, int(time.time())
        echo = prompt if (req.echo and isinstance(prompt, str)) else ""
        chunks = self.engine.generate(gen_req)
        try:
            first = await _first(chunks)
            base = {"id": rid, "object": "text_completion", "created": created, "model": self.model_id,
                    "system_fingerprint": self.fingerprint}
            if not req.stream:
                text, last = await _collect(first, chunks)
                if obs is not None:
                    obs.done(last)
                yield {**base, "choices": [{"index": 0, "text": echo + text, "logprobs": None,
                                            "finish_reason": last.finish_reason}], "usage": usage_dict(last.usage)}
                return
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            pending = echo
            async for c in _rest(first, chunks, include_first=True):
                parts = []
                text, pending = pending + c.text, ""
                if text or c.finish_reason:
                    ev = {**base, "choices": [{"index": 0, "text": text, "logprobs": None,
                                               "finish_reason": c.finish_reason}]}
                    if c.finish_reason and not include_usage:
                        ev["usage"] = usage_dict(c.usage)
                    parts.append(sse(ev))
                if c.finish_reason:
                    if obs is not None:
                        obs.done(c)
                    if include_usage:
                        parts.append(sse({**base, "choices": [], "usage": usage_dict(c.usage)}))
                    parts.append("data: [DONE]\n\n")
                if parts:
                    yield "".join(parts)
        finally:
            await chunks.aclose()

    # ------------------------------------------------------------------ embeddings
    async def embeddings(self, req: EmbeddingRequest,
                         obs: GenerationObserver | None = None) -> AsyncIterator[ItemT]:
        vectors, n_tokens = await self.engine.embed(req.inputs())
        if req.dimensions is not None:
            if req.dimensions > len(vectors[0]):
                raise InvalidRequest(f"dimensions must be at most {len(vectors[0])} for this model",
                                     param="dimensions")
            vectors = [_renorm(v[: req.dimensions]) for v in vectors]
        data = []
        for i, v in enumerate(vectors):
            emb: Any = v
            if req.encoding_format == "base64":
                import base64
                import struct

                emb = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        if obs is not None:
            obs.embedded(n_tokens)
        yield {"object": "list", "data": data, "model": self.model_id,
               "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


def _renorm(v: list[float]) -> list[float]:
    n = sum(x * x for x in v) ** 0.5 or 1.0
    return [x / n for x in v]


async def _first(chunks: AsyncIterator[GenerationChunk]) -> GenerationChunk:
    """The first chunk: request errors surface here, before any byte is sent."""
    return await chunks.__anext__()


async def _collect(first: GenerationChunk, chunks: AsyncIterator[GenerationChunk]) -> tuple[str, GenerationChunk]:
    """The whole text of a non-streamed answer and its last (finishing) chunk."""
    parts, last = [first.text], first
    async for c in _rest(first, chunks):
        parts.append(c.text)
        last = c
    return "".join(parts), last


async def _rest(first: GenerationChunk, chunks: AsyncIterator[GenerationChunk],
                include_first: bool = False) -> AsyncIterator[GenerationChunk]:
    if include_first:
        yield first
    if first.finish_reason:
        return
    async for c in chunks:
        yield c
