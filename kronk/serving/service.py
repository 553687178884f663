"""One model's engine behind the endpoint handlers: what a replica (or the in-process backend) runs a call with.

``ModelService.run(call)`` looks the call's endpoint up in the handler table it
was built with (the API families register theirs in ``kronk.api.families``) and
yields the handler's items. Every exception becomes one
:class:`~kronk.serving.items.Failure` item, so errors cross a replica hop in one
form and never fail a whole batch.

What the handlers share lives here: the model's template facts (turn markers
that end an answer, whether the template renders tools itself, reasoning), and
:meth:`ModelService.prepare`, which runs rendering, tokenization and grammar
compilation off the event loop, so a 2 MB prompt being prepared does not pause
other requests' streams.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

from kronk.engine.protocol import Engine
from kronk.parsers import guess_tool_parser, template_supports_tools
from kronk.serving.call import Call, Endpoint, RequestContext
from kronk.serving.items import Failure, Item
from kronk.serving.sampling import ModelSampling, describe, model_sampling
from kronk.settings import SamplingDefaults
from kronk.telemetry.generation import GenerationObserver
from kronk.telemetry.metrics import Recorder

log = logging.getLogger("kronk.serving")

T = TypeVar("T")
# (service, validated request, context, observer) -> items
Handler = Callable[["ModelService", Any, RequestContext, GenerationObserver], AsyncIterator[Item]]

# Preparing a request this small (characters to render and tokenize) takes well under a millisecond: inline.
INLINE_PREPARE_CHARS = 8192

# Turn markers of common templates: if one shows up as text, the turn is over.
TURN_MARKERS = ("<end_of_turn>", "<start_of_turn>", "<|im_end|>", "<|im_start|>", "<|eot_id|>",
                "<|start_header_id|>", "<|end|>", "<|user|>", "<|endoftext|>", "</s>")

HARMONY_STOPS = ("<|return|>", "<|call|>", "<|endoftext|>")


class ModelService:
    def __init__(self, engine: Engine, model_id: str, handlers: Mapping[Endpoint, Handler],
                 tool_parser: str | None = None, reasoning: bool | None = None,
                 system_fingerprint: str | None = None, sampling: ModelSampling | None = None,
                 prompt_tools: bool = False):
        """``sampling``: the model's sampling defaults (kronk.serving.sampling.model_sampling: the server's
        setting, the GGUF, the catalog entry); default: the GGUF's values, else the server defaults.
        ``prompt_tools``: the model is known to call tools described in a prompt (its catalog entry's
        capabilities say ``tools``), so tools are described to it with ``tool_choice: auto`` even where its chat
        template cannot render them."""
        self.engine = engine
        self.model_id = model_id
        self.handlers = dict(handlers)
        self.sampling = sampling if sampling is not None else model_sampling(SamplingDefaults(), engine)
        log.info("model %s: sampling defaults %s", model_id, describe(self.sampling))
        template = getattr(getattr(engine, "template", None), "source", None)
        self.template_source: str | None = template
        self.template_tools = template_supports_tools(template)  # the template renders `tools` itself
        self.prompt_tools = prompt_tools
        model = getattr(engine, "model", None)  # the GGUF's names, when the engine has a loaded model
        meta = getattr(model, "meta", None)
        self.tool_parser = tool_parser or guess_tool_parser(
            model_id, template, gguf_name=meta("general.name") if callable(meta) else None,
            architecture=getattr(model, "architecture", None) if meta else None)
        self.reasoning = reasoning if reasoning is not None else bool(template and "<think>" in template)
        self.fingerprint = system_fingerprint or f"kronk-{model_id}"
        # metrics of this replica's requests (a model deployment replaces it with one tagged by replica)
        self.recorder = Recorder("llm", "local", model=model_id)
        # A turn marker ends the answer: as a special token (it renders as no text) or as text.
        self.stop_markers: list[str] = []
        self.stop_token_ids: list[int] = []
        # gpt-oss (harmony) ends a message with <|end|> and goes on with the next channel: its answer ends at
        # <|return|> (the final message) or <|call|> (a tool call).
        markers = HARMONY_STOPS if self.tool_parser == "harmony" else TURN_MARKERS
        for marker in (m for m in markers if template and m in template):
            toks = engine.tokenize(marker, add_special=False, parse_special=True)
            if len(toks) == 1:
                self.stop_token_ids.append(toks[0])
            self.stop_markers.append(marker)

    @property
    def n_ctx(self) -> int:
        """Tokens one request's context holds (prompt and answer)."""
        return self.engine.stats().n_ctx_slot

    async def prepare(self, fn: Callable[..., T], *args: Any, size: int) -> T:
        """``fn(*args)``: template rendering, tokenization, grammar compilation. ``size`` estimates the work (the
        characters to render and tokenize; :data:`INLINE_PREPARE_CHARS` or more for a schema to compile): big
        work runs off the event loop, so it never pauses other requests' streams; small work (microseconds)
        runs inline, so that requests arriving together reach the engine together instead of one thread hop
        apart (each hop waits for the GIL behind the decode thread)."""
        if size < INLINE_PREPARE_CHARS:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    async def run(self, call: Call) -> AsyncIterator[Item]:
        """The call's items; a failure of any kind is the last item, as a Failure."""
        obs = GenerationObserver(self.recorder, self.model_id, call.endpoint.value, call.ctx)
        error: BaseException | None = None
        try:
            handler = self.handlers.get(call.endpoint)
            if handler is None:
                raise LookupError(f"no handler for {call.endpoint}")
            async for item in handler(self, call.request, call.ctx, obs):
                yield item
        except Exception as e:
            error = e
            yield Failure.of(e)
        except BaseException as e:  # cancelled: the caller went away
            error = e
            raise
        finally:
            obs.end(error)
