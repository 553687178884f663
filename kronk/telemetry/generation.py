"""One request inside a model replica: its metrics and spans, recorded when it ends.

The engine already measures a generation (queue wait, prefill, time to first
token, decode) and hands the numbers over in the final chunk. So nothing runs per
token: the replica's ``kronk.generate`` span starts with the request, and at the
end :meth:`GenerationObserver.done` records the metrics and creates the phase
spans after the fact, with start and end times computed from those durations::

    kronk.generate                  (child of the route's HTTP span, via the call's traceparent)
    ├── kronk.first_token           submitted -> first token (TTFT)
    │   ├── kronk.queue_wait        submitted -> slot assigned
    │   └── kronk.prefill           slot assigned -> first token (prompt, reused tokens)
    └── kronk.decode                first token -> last token (tokens, tok/s)
"""

from __future__ import annotations

import time
from typing import Any

from kronk.telemetry import tracing
from kronk.telemetry.metrics import GenerationNumbers, Recorder


class GenerationObserver:
    def __init__(self, recorder: Recorder | None, model: str, kind: str, ctx: Any = None):
        """``ctx``: the call's RequestContext (its ``request_id`` and ``traceparent``), or None."""
        self.recorder = recorder
        self.model = model
        self.kind = kind
        self.request_id = getattr(ctx, "request_id", None)
        traceparent = getattr(ctx, "traceparent", None)
        self.numbers: GenerationNumbers | None = None
        self.span = None
        if tracing.enabled():
            self.span = tracing.start_span("kronk.generate", {"traceparent": traceparent} if traceparent else None,
                                           kind="server", attributes={
                "kronk.model": model, "kronk.endpoint": kind, "kronk.request_id": self.request_id,
                "kronk.replica": recorder.replica if recorder else None, "gen_ai.request.model": model})

    def done(self, chunk: Any) -> None:
        """The final chunk of a generation arrived (its usage and timings are filled in)."""
        if chunk.usage is None or chunk.timings is None or self.numbers is not None:
            return
        if self.recorder is not None:
            self.numbers = self.recorder.on_generation(chunk.usage, chunk.timings)
        else:
            self.numbers = GenerationNumbers.of(chunk.usage, chunk.timings)
        if self.span is not None:
            self._phase_spans(self.numbers, chunk.finish_reason)

    def embedded(self, prompt_tokens: int) -> None:
        if self.recorder is not None:
            self.recorder.on_embedding(prompt_tokens)
        if self.span is not None:
            self.span.set_attribute("gen_ai.usage.input_tokens", prompt_tokens)

    def end(self, error: BaseException | None = None) -> None:
        if self.span is not None:
            if error is not None and not isinstance(error, Exception):  # the client went away
                self.span.set_attribute("kronk.cancelled", True)
            tracing.end_span(self.span, error=error if isinstance(error, Exception) else None)
            self.span = None

    def _phase_spans(self, n: GenerationNumbers, finish_reason: str | None) -> None:
        end = time.time_ns()
        first = end - int(n.decode_s * 1e9)
        started = first - int(n.prefill_s * 1e9)
        submitted = first - int(n.ttft_s * 1e9)
        self.span.set_attributes({"gen_ai.usage.input_tokens": n.prompt_tokens,
                                  "gen_ai.usage.output_tokens": n.completion_tokens,
                                  "kronk.finish_reason": finish_reason or "", "kronk.context_tokens": n.context_tokens,
                                  "kronk.context_bucket": n.context_bucket})
        ft = tracing.start_span("kronk.first_token", self.span, start_ns=submitted,
                                attributes={"kronk.ttft_s": n.ttft_s})
        q = tracing.start_span("kronk.queue_wait", ft, start_ns=submitted, attributes={"kronk.queue_s": n.queue_s})
        tracing.end_span(q, started)
        p = tracing.start_span("kronk.prefill", ft, start_ns=started, attributes={
            "kronk.prompt_tokens": n.prompt_tokens, "kronk.reused_tokens": n.reused_tokens,
            "kronk.prefill_tokens": n.prefill_tokens, "kronk.prefill_tok_s": n.prefill_tok_s})
        tracing.end_span(p, first)
        tracing.end_span(ft, first)
        d = tracing.start_span("kronk.decode", self.span, start_ns=first, attributes={
            "kronk.completion_tokens": n.completion_tokens, "kronk.decode_tok_s": n.decode_tok_s,
            "kronk.inter_token_latency_s": n.inter_token_latency_s, "kronk.context_bucket": n.context_bucket})
        tracing.end_span(d, end)
