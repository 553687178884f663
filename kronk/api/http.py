"""What every route shares: reading the body, the request's context, and turning a call's items into a response.

A route validates its body once into its family's request and hands a
:class:`~kronk.serving.call.Call` to the app's backend (``app.state.backend``).
The first item decides the response: a Failure is an error envelope with its
status, a dict the JSON answer, a string the start of an SSE stream; a Failure
after the first item is an SSE ``error`` event, and the stream ends.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from kronk.api.limits import DEFAULT_LIMITS, INT_MAX_DIGITS, Limits, lone_surrogate_path, nesting_depth
from kronk.api.middleware import request_info, set_model
from kronk.api.wire import Wire, wire_for
from kronk.errors import InvalidRequest, ModelNotFound, PayloadTooLarge
from kronk.serving.affinity import MAX_SESSION_ID
from kronk.serving.backend import Backend, ModelOps
from kronk.serving.call import Call, Endpoint, RequestContext
from kronk.serving.items import Failure, Item
from kronk.telemetry import tracing


def backend_of(request: Request) -> Backend:
    return request.app.state.backend


def ops_of(request: Request) -> ModelOps:
    return backend_of(request).model_ops()


def limits_of(request: Request) -> Limits:
    return getattr(request.app.state, "limits", DEFAULT_LIMITS)


# A \uD800-\uDFFF escape: the only way a lone surrogate gets into a string (strict UTF-8 carries none).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is larger than {limit} bytes (the server's max_body_bytes)")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, at most ``limit`` bytes: a larger Content-Length is refused before reading, and a body without
    one (chunked) is read only up to the limit (413 beyond it); an over-limit body is never held in memory."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise InvalidRequest("the Content-Length header is not a number")
        if int(length) > limit:
            raise _too_large(limit)
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


def _too_deep(limit: int) -> InvalidRequest:
    return InvalidRequest(f"the request body nests objects and arrays more than {limit} levels deep (the server's "
                          "max_json_depth)")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise ValueError(f"the number {text[:40]} is out of range")
    return v


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object, within the app's limits (size, nesting), as strict JSON: UTF-8, no NaN or
    Infinity, finite numbers, integers of at most 4300 digits, no lone surrogates (every failure: a 400 or 413)."""
    limits = limits_of(request)
    raw = await read_body(request, limits.max_body_bytes)
    if not raw:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequest(f"the request body is not valid UTF-8 ({e.reason} at byte {e.start})") from e
    try:
        body = json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise _too_deep(limits.max_json_depth) from None
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"the request body is not valid JSON: {e}") from e
    except ValueError as e:  # a parse hook's, or Python's limit on integer digits
        msg = str(e)
        if "digits" in msg:
            msg = f"a number has more than {INT_MAX_DIGITS} digits"
        raise InvalidRequest(f"the request body is not valid JSON: {msg}") from e
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if nesting_depth(body, limits.max_json_depth) > limits.max_json_depth:
        raise _too_deep(limits.max_json_depth)
    if _SURROGATE_ESCAPE.search(text):  # a surrogate pair (an escaped emoji) is fine; a lone one is not
        where = lone_surrogate_path(body)
        if where is not None:
            raise InvalidRequest("the request contains an invalid Unicode string (lone surrogate)",
                                 param=None if where == "body" else where)
    return body


def context_of(request: Request) -> RequestContext:
    """The request's one id (see kronk.api.middleware), the trace context to continue in the replica (the
    current (HTTP request) span when tracing is on, else the client's own ``traceparent``) and the client's
    ``x-session-id``, which routes a conversation's turns to one replica (a longer one than
    kronk.serving.affinity.MAX_SESSION_ID is not used)."""
    session = request.headers.get("x-session-id") or None
    return RequestContext(request_id=request_info(request).request_id,
                          traceparent=tracing.current_traceparent() or request.headers.get("traceparent"),
                          session_id=session if session is not None and len(session) <= MAX_SESSION_ID else None)


async def installed_models(backend: Backend) -> list[dict[str, Any]]:
    try:
        return await backend.model_ops().call("list_models")
    except Exception:  # the store is informational here; never fail a listing or an error message
        return []


async def offline_models(backend: Backend) -> list[str]:
    """Catalog models that ship in installed PyPI packages and are not in the store yet (served on demand too)."""
    try:
        return await backend.model_ops().call("offline_models")
    except Exception:  # informational, as installed_models
        return []


async def check_model(backend: Backend, model: str) -> None:
    """A model that can be asked for: one the server pins, or (with the pool on) any installed model."""
    ids = await backend.model_ids()
    if model not in ids:
        installed = any(m["name"] == model for m in await installed_models(backend))
        if getattr(backend, "on_demand", False) and (installed or model in await offline_models(backend)):
            return
        if installed:
            raise ModelNotFound(f"The model '{model}' is installed but not served; start the server with it "
                                f"(kronk server start --model {model}). Served models: {', '.join(ids)}.",
                                param="model")
        raise ModelNotFound(f"The model '{model}' does not exist. Available models: {', '.join(ids) or 'none'}.",
                            param="model")


async def handle(request: Request, endpoint: Endpoint, schema: type[BaseModel],
                 body: dict[str, Any] | None = None) -> Response:
    """A model route: validate the body once, check the model, run the call, answer with its items (written
    with the wire of the route's family, kronk/api/wire.py). ``body``: the JSON object when the route has read
    it already (a family that maps its fields before validating)."""
    backend = backend_of(request)
    with tracing.span("kronk.route", attributes={"kronk.endpoint": endpoint.value}) as sp:
        if body is None:
            body = await read_json(request)
        model = body.get("model")
        if isinstance(model, str) and model in await backend.model_ids():
            set_model(request, model)  # label this request's metrics, 4xx included, with a served model
        req = schema.model_validate(body, context={"limits": limits_of(request)})
        await check_model(backend, req.model)  # type: ignore[attr-defined]
        set_model(request, req.model)  # type: ignore[attr-defined]  # a pool model the check let through, too
        if sp is not None:
            sp.set_attributes({"kronk.model": req.model, "kronk.stream": bool(body.get("stream"))})  # type: ignore[attr-defined]
    return await respond(backend.stream(Call(endpoint, req, context_of(request))), request)


async def respond(items: AsyncIterator[Item], request: Request) -> Response:
    wire = wire_for(request.url.path)
    try:
        first = await items.__anext__()
    except BaseException:
        await items.aclose()
        raise
    if isinstance(first, Failure):
        await items.aclose()
        return wire.error_response(first)  # with Retry-After when the failure knows it
    if isinstance(first, dict):
        await items.aclose()
        return JSONResponse(first)
    return StreamingResponse(_stream(first, items, wire, request_info(request).span), media_type=wire.media_type,
                             headers=wire.headers)


async def _stream(first: str, items: AsyncIterator[Item], wire: Wire, parent: Any = None) -> AsyncIterator[str]:
    """The streamed body (SSE, or a family's own stream); with tracing on, a ``kronk.stream_write`` span covers
    writing it to the client."""
    n, size, t0 = 1, len(first), time.time_ns()
    try:
        yield first
        async for item in items:
            if isinstance(item, Failure):  # mid-stream failure: tell the client in-band, then end the stream
                yield wire.stream_error(item)
                return
            n += 1
            size += len(item)
            yield item
    finally:
        await items.aclose()
        if parent is not None:
            tracing.end_span(tracing.start_span("kronk.stream_write", parent, start_ns=t0),
                             attributes={"kronk.items": n, "kronk.chars": size})
