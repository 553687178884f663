"""Request ids, the HTTP request span and request counting: one ASGI middleware around every route.

* ``X-Request-ID``: a client's id (letters, digits, ``._:-``, up to 128) is kept, otherwise one is made;
  it is sent back on the response and is the request's one id: the engine's request id, the response's
  ``id`` (``chatcmpl-<id>``), the spans' ``kronk.request_id`` and the slot's ``request_id`` in ``/v1/stats``.
* Tracing (only when :func:`kronk.telemetry.tracing.enabled`): a SERVER span per request, the child of
  an incoming W3C ``traceparent``, current while the route runs and streams, so the ids handed to a
  replica point at it; it ends when the last byte is sent.
* Metrics: ``kronk_requests_total{model, replica, route, status}`` when the response ends (the
  endpoint's route template as ``route``; ``model`` once a route has named a served model; probes and scrapes,
  ``/health`` and ``/metrics``, are not counted).
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kronk.telemetry import tracing
from kronk.telemetry.metrics import Recorder

SCOPE_KEY = "kronk.request"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
NOT_COUNTED = ("/health", "/metrics")


@dataclass
class RequestInfo:
    request_id: str
    model: str | None = None
    span: Any = None


def request_info(request: Request) -> RequestInfo:
    """The request's id and span (made here if the middleware is not installed, e.g. in bare tests)."""
    info = request.scope.get(SCOPE_KEY)
    if info is None:
        rid = request.headers.get("x-request-id", "")
        info = request.scope[SCOPE_KEY] = RequestInfo(rid if _VALID_ID.match(rid) else uuid.uuid4().hex)
    return info


def set_model(request: Request, model: str) -> None:
    """Label this request's metrics and span with a served model's name."""
    info = request_info(request)
    info.model = model
    if info.span is not None:
        info.span.set_attribute("kronk.model", model)


def _route_of(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, recorder: Recorder):
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        rid = headers.get("x-request-id", "")
        info = RequestInfo(rid if _VALID_ID.match(rid) else uuid.uuid4().hex)
        scope[SCOPE_KEY] = info
        status = 500
        rid_header = (b"x-request-id", info.request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), rid_header]}
            await send(message)

        if not tracing.enabled():
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                self._count(scope, info, status)
            return

        method, path = scope.get("method", "GET"), scope.get("path", "")
        info.span = tracing.start_span(f"{method} {path}", headers, kind="server", attributes={
            "http.request.method": method, "url.path": path, "kronk.request_id": info.request_id,
            "user_agent.original": headers.get("user-agent"), "server.address": headers.get("host")})
        err: BaseException | None = None
        t0 = time.perf_counter()
        try:
            with tracing.activate(info.span):
                await self.app(scope, receive, send_with_id)
        except BaseException as e:
            err = e
            raise
        finally:
            route = _route_of(scope)
            info.span.update_name(f"{method} {route}")
            if status >= 500 and err is None:
                from opentelemetry.trace import Status, StatusCode

                info.span.set_status(Status(StatusCode.ERROR))
            tracing.end_span(info.span, error=err if isinstance(err, Exception) else None, attributes={
                "http.route": route, "http.response.status_code": status, "kronk.model": info.model,
                "kronk.duration_s": time.perf_counter() - t0})
            self._count(scope, info, status)

    def _count(self, scope: Scope, info: RequestInfo, status: int) -> None:
        route = _route_of(scope)
        if route in NOT_COUNTED:
            return
        self.recorder.on_http_request(route, status, info.model)
