"""OpenTelemetry tracing: off unless configured, and then free of cost.

:func:`setup` (called in every kronk process: ingress, model replicas, model
manager, in-process servers) builds a TracerProvider only when the standard
``OTEL_*`` variables ask for traces (``OTEL_TRACES_EXPORTER`` other than
``none``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)
or kronk's ``otel`` setting (``KRONK_OTEL=1``, ``--otel``); otherwise :func:`enabled` is False and kronk's code skips
every tracing call (not even the no-op tracer runs). The exporter is OTLP over
HTTP/protobuf (``OTEL_EXPORTER_OTLP_*`` configure it), or ``console``.

Trace context crosses Ray calls as a plain dict carrier (W3C ``traceparent``
and ``tracestate``): :func:`carrier` injects the current span, :func:`extract`
reads one back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("kronk.telemetry")

_tracer: Any = None
_configured = False


def enabled() -> bool:
    return _tracer is not None


def wanted_by_env(env: Mapping[str, str] = os.environ) -> bool:
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none" or env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return bool(exporter or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup(service: str = "kronk", on: bool = False) -> bool:
    """Configure tracing once per process, when ``on`` (the ``otel`` setting) or the standard OTEL_* variables
    ask for it (OTEL_TRACES_EXPORTER=none or OTEL_SDK_DISABLED=true turn it off); True when traces are on."""
    global _configured
    if _configured:
        return enabled()
    _configured = True
    env = os.environ
    disabled = env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none" or \
        env.get("OTEL_SDK_DISABLED", "").lower() == "true"
    if disabled or not (on or wanted_by_env()):
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)})
        provider = TracerProvider(resource=resource)
        for name in [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")]:
            if name == "console":
                from opentelemetry.sdk.trace.export import ConsoleSpanExporter

                provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
            elif name in ("otlp", ""):
                proto = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                                       os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"))
                if proto != "http/protobuf":
                    log.warning("OTLP protocol %s is not available; exporting with http/protobuf", proto)
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            else:
                log.warning("unknown OTEL_TRACES_EXPORTER %r ignored", name)
        trace.set_tracer_provider(provider)
        use_provider(provider)
        log.info("OpenTelemetry tracing is on (%s)", os.environ.get("OTEL_TRACES_EXPORTER", "otlp"))
    except Exception:
        log.exception("could not set up OpenTelemetry tracing; continuing without it")
        disable()
    return enabled()


def use_provider(provider: Any) -> None:
    """Trace through ``provider`` (tests pass one with an in-memory exporter)."""
    global _tracer, _configured
    _tracer = provider.get_tracer("kronk")
    _configured = True


def disable() -> None:
    global _tracer
    _tracer = None


def tracer() -> Any:
    return _tracer


# ---------------------------------------------------------------------- context


def extract(carrier: Mapping[str, Any] | None) -> Any:
    """An OTel Context from a carrier holding ``traceparent`` (None when off or absent)."""
    if _tracer is None or not carrier or not carrier.get("traceparent"):
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({k: v for k, v in carrier.items() if isinstance(v, str)})


def carrier(span: Any = None) -> dict[str, str]:
    """``{"traceparent": ..., "tracestate": ...}`` for ``span`` (default: the current span); {} when off."""
    if _tracer is None:
        return {}
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    out: dict[str, str] = {}
    ctx = trace.set_span_in_context(span) if span is not None else None
    TraceContextTextMapPropagator().inject(out, context=ctx)
    return out


def current_traceparent() -> str | None:
    return carrier().get("traceparent") if _tracer is not None else None


def start_span(name: str, parent: Any = None, *, kind: str | None = None, start_ns: int | None = None,
               attributes: Mapping[str, Any] | None = None) -> Any:
    """A started span (None when tracing is off). ``parent``: a Context, a Span or a carrier dict."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    if isinstance(parent, Mapping):
        parent = extract(parent)
    elif parent is not None and isinstance(parent, trace.Span):
        parent = trace.set_span_in_context(parent)
    k = getattr(trace.SpanKind, kind.upper()) if kind else trace.SpanKind.INTERNAL
    return _tracer.start_span(name, context=parent, kind=k, start_time=start_ns,
                              attributes={k2: v for k2, v in (attributes or {}).items() if v is not None})


def end_span(span: Any, end_ns: int | None = None, error: BaseException | None = None,
             attributes: Mapping[str, Any] | None = None) -> None:
    if span is None:
        return
    if attributes:
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:200]))
    span.end(end_time=end_ns)


@contextmanager
def span(name: str, parent: Any = None, attributes: Mapping[str, Any] | None = None) -> Iterator[Any]:
    """A span around a block, current inside it (yields None and does nothing when tracing is off)."""
    if _tracer is None:
        yield None
        return
    from opentelemetry import context, trace

    s = start_span(name, parent, attributes=attributes)
    token = context.attach(trace.set_span_in_context(s))
    err: BaseException | None = None
    try:
        yield s
    except BaseException as e:
        err = e
        raise
    finally:
        context.detach(token)
        end_span(s, error=err)


@contextmanager
def activate(s: Any) -> Iterator[None]:
    """Make ``s`` the current span inside the block."""
    if s is None:
        yield
        return
    from opentelemetry import context, trace

    token = context.attach(trace.set_span_in_context(s))
    try:
        yield
    finally:
        context.detach(token)


class PhaseSpans:
    """A parent span and one child span per phase, for work that reports phases (pull progress).

    ``phase(name)`` ends the running phase's span and starts the next one when the name changes;
    names mapped to None (e.g. ``done``) only end the running one. Nothing happens when tracing is off.
    """

    def __init__(self, name: str, parent: Any, names: Mapping[str, str | None],
                 attributes: Mapping[str, Any] | None = None):
        self.names = names
        self.root = start_span(name, parent, attributes=attributes)
        self.current: str | None = None
        self._span: Any = None

    def phase(self, phase: str, attributes: Mapping[str, Any] | None = None) -> None:
        if self.root is None or phase == self.current:
            return
        end_span(self._span)
        self.current = phase
        name = self.names.get(phase)
        self._span = start_span(name, self.root, attributes=attributes) if name else None

    def end(self, error: BaseException | None = None, attributes: Mapping[str, Any] | None = None) -> None:
        if self.root is None:
            return
        end_span(self._span, error=error)
        end_span(self.root, error=error, attributes=attributes)
        self.root = self._span = None
