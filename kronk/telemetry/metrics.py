"""Recording: one call updates this process's :class:`MetricStore` and the process's metrics sink, if any.

Code that knows a number calls a :class:`Recorder` (``on_generation``,
``on_http_request``, ``on_engine_stats``, ``on_pull``) without caring where it
runs. Every value lands in the recorder's own store (what ``/metrics`` and
``/v1/stats`` read) and in the process's :class:`MetricsSink` when one is
installed (:func:`set_metrics_sink`): inside Ray, deployments/metrics.py
installs Ray's metrics (``ray.util.metrics``, exported by Ray's Prometheus
endpoint as ``ray_<name>``) when a replica or actor starts; elsewhere there is
none. Every series carries ``model`` and ``replica``. Recording happens once per
request (or per sample), never per token.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from kronk.telemetry import specs
from kronk.telemetry.buckets import context_bucket
from kronk.telemetry.specs import Spec
from kronk.telemetry.stats import LabelKey, MetricStore

log = logging.getLogger("kronk.telemetry")

Method = Literal["inc", "set", "observe"]


class MetricsSink(Protocol):
    """Where a process's recorders also send every value (e.g. Ray's metrics, deployments/metrics.py)."""

    def record(self, spec: Spec, method: Method, value: float, tags: dict[str, str]) -> None:
        """Add ``value`` to (``inc``), set (``set``) or observe it in (``observe``) the metric of ``spec``."""


_sink: MetricsSink | None = None


def set_metrics_sink(sink: MetricsSink | None) -> None:
    """Install this process's metrics sink (None: none); recorders use it from their next value on."""
    global _sink
    _sink = sink


def metrics_sink() -> MetricsSink | None:
    """This process's metrics sink (None when none is installed)."""
    return _sink


@dataclass
class GenerationNumbers:
    """What one finished generation measured (from its final chunk's usage and timings)."""

    prompt_tokens: int
    reused_tokens: int
    completion_tokens: int
    queue_s: float
    prefill_s: float
    ttft_s: float
    decode_s: float
    context_tokens: int
    context_bucket: str
    prefill_tok_s: float | None
    decode_tok_s: float | None
    inter_token_latency_s: float | None

    @property
    def prefill_tokens(self) -> int:
        return self.prompt_tokens - self.reused_tokens

    @classmethod
    def of(cls, usage: Any, timings: Any) -> GenerationNumbers:
        """Decode speed counts the tokens after the first over the time after the first token;
        inter-token latency is its inverse, the mean gap of this generation."""
        p, r, c = usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens
        q, pre, ttft, dec = timings.queue_s, timings.prefill_s, timings.ttft_s, timings.decode_s
        ctx = timings.context_tokens or (p + c)
        steady = c > 1 and dec > 0
        return cls(p, r, c, q, pre, ttft, dec, ctx, context_bucket(ctx),
                   (p - r) / pre if p > r and pre > 0 else None,
                   (c - 1) / dec if steady else None, dec / (c - 1) if steady else None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Recorder:
    """One process's (one replica's) metrics; ``snapshot()`` is what ``/metrics`` and ``/v1/stats`` read."""

    def __init__(self, component: str, replica: str, model: str | None = None, use_sink: bool = True):
        """``use_sink`` False: only this recorder's store, never the process's metrics sink."""
        self.component = component
        self.replica = replica
        self.model = model
        self.store = MetricStore()
        self.use_sink = use_sink
        self.engine: dict[str, Any] | None = None
        self.on_change: Callable[[], None] | None = None  # e.g. a Publisher's poke()

    # ------------------------------------------------------------------ primitives
    def _key(self, spec: Spec, labels: dict[str, Any]) -> tuple[LabelKey, dict[str, str]]:
        tags = {"model": self.model or "", "replica": self.replica}
        tags.update({k: str(v) for k, v in labels.items() if v is not None})
        tags = {k: tags.get(k, "") for k in spec.labels}
        return tuple(tags.items()), tags

    def _forward(self, spec: Spec, method: Method, value: float, tags: dict[str, str]) -> None:
        sink = _sink
        if sink is None or not self.use_sink:
            return
        try:
            sink.record(spec, method, value, tags)
        except Exception:  # metrics must never break serving
            log.warning("recording %s in the metrics sink failed; it is off for this recorder", spec.name,
                        exc_info=True)
            self.use_sink = False

    def inc(self, spec: Spec, value: float = 1.0, **labels: Any) -> None:
        if value <= 0:
            return
        key, tags = self._key(spec, labels)
        self.store.inc(spec.name, key, value)
        self._forward(spec, "inc", value, tags)

    def set(self, spec: Spec, value: float, **labels: Any) -> None:
        key, tags = self._key(spec, labels)
        self.store.set(spec.name, key, value)
        self._forward(spec, "set", value, tags)

    def observe(self, spec: Spec, value: float, **labels: Any) -> None:
        key, tags = self._key(spec, labels)
        self.store.observe(spec.name, key, value, spec.bounds)
        self._forward(spec, "observe", value, tags)

    def changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # ------------------------------------------------------------------ what kronk records
    def on_http_request(self, route: str, status: int, model: str | None = None) -> None:
        self.inc(specs.REQUESTS, 1, model=model or "", route=route, status=status)
        self.changed()

    def on_generation(self, usage: Any, timings: Any, model: str | None = None) -> GenerationNumbers:
        n = GenerationNumbers.of(usage, timings)
        m = {"model": model} if model else {}
        self.inc(specs.PROMPT_TOKENS, n.prompt_tokens, **m)
        self.inc(specs.REUSED_TOKENS, n.reused_tokens, **m)
        self.inc(specs.COMPLETION_TOKENS, n.completion_tokens, **m)
        self.observe(specs.QUEUE_WAIT, n.queue_s, **m)
        self.observe(specs.TTFT, n.ttft_s, **m)
        if n.decode_tok_s is not None and n.inter_token_latency_s is not None:
            self.observe(specs.DECODE_TPS, n.decode_tok_s, context_bucket=n.context_bucket, **m)
            self.observe(specs.ITL, n.inter_token_latency_s, **m)
        if n.prefill_tok_s is not None:
            self.observe(specs.PREFILL_TPS, n.prefill_tok_s, **m)
        self.changed()
        return n

    def on_embedding(self, prompt_tokens: int, model: str | None = None) -> None:
        self.inc(specs.PROMPT_TOKENS, prompt_tokens, **({"model": model} if model else {}))
        self.changed()

    def on_engine_stats(self, st: Any) -> None:
        """Gauges from an EngineStats sample (KV cells, active and waiting sequences)."""
        self.set(specs.KV_USED, st.kv_cells_used)
        self.set(specs.KV_TOTAL, st.kv_cells_total)
        self.set(specs.ACTIVE, st.active)
        self.set(specs.WAITING, st.waiting)
        # speculative decoding and shared prefixes: the engine counts since it started (this replica's engine),
        # so the store holds its counts as they are and the sink (a Ray counter) gets what is new since the last
        # sample; like every other counter a series appears once it is above 0 (Ray's exporter has no series
        # for a counter never increased, and both endpoints show the same samples)
        last = self.engine or {}
        for spec, field in ((specs.SPEC_DRAFTED, "spec_draft_tokens"), (specs.SPEC_ACCEPTED, "spec_accepted_tokens"),
                            (specs.SHARED_TOKENS, "prompt_tokens_shared")):
            now = int(getattr(st, field, 0))
            if now <= 0:
                continue
            key, tags = self._key(spec, {})
            self.store.set(spec.name, key, now)
            if now > int(last.get(field) or 0):
                self._forward(spec, "inc", now - int(last.get(field) or 0), tags)
        # the prefix cache tiers: the same for their counters, labelled by tier; their bytes as a gauge
        last_tiers = last.get("prefix_cache") or {}
        for tier, now_tier in (getattr(st, "prefix_cache", None) or {}).items():
            before = last_tiers.get(tier) or {}
            for spec, field in specs.PREFIX_COUNTERS:
                now = int(now_tier.get(field, 0))
                if now <= 0:
                    continue
                key, tags = self._key(spec, {"tier": tier})
                self.store.set(spec.name, key, now)
                if now > int(before.get(field) or 0):
                    self._forward(spec, "inc", now - int(before.get(field) or 0), tags)
            self.set(specs.PREFIX_BYTES, int(now_tier.get("bytes", 0)), tier=tier)
        drafted = int(getattr(st, "spec_draft_tokens", 0))
        self.set(specs.SPEC_ACCEPTANCE, int(getattr(st, "spec_accepted_tokens", 0)) / drafted if drafted else 0.0)
        self.engine = {k: v for k, v in asdict(st).items() if k != "slots"}

    def on_pull(self, model: str, status: str, bytes_moved: int, code: str | None = None) -> None:
        self.inc(specs.PULL_JOBS, 1, model=model, status=status)
        self.inc(specs.PULL_BYTES, bytes_moved, model=model)
        if status == "failed":
            self.inc(specs.PULL_FAILURES, 1, model=model, code=code or "unknown")
        self.changed()

    def on_pool_event(self, event: dict[str, Any], reserved_bytes: int, budget_bytes: int) -> None:
        """A model pool's state change (kronk.serving.pool): counted by kind, load times, the memory reserved."""
        self.inc(specs.MODEL_EVENTS, 1, model=event["model"], event=event["type"])
        if event["type"] == "loaded" and event.get("load_s") is not None:
            self.observe(specs.MODEL_LOAD_TIME, event["load_s"], model=event["model"])
        self.set(specs.POOL_BYTES, reserved_bytes)
        self.set(specs.POOL_BUDGET, budget_bytes)
        self.changed()

    def snapshot(self) -> dict[str, Any]:
        """Plain data (picklable, JSON-able): who, when, every series, the last engine sample."""
        return {"component": self.component, "replica": self.replica, "model": self.model, "pid": os.getpid(),
                "time": time.time(), "series": self.store.series(), "engine": self.engine}
