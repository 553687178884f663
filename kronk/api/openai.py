"""The OpenAI routes: thin handlers that validate, find the model and stream its items."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from kronk.api.backend import Backend, RequestContext, get_backend
from kronk.api.middleware import request_info, set_model
from kronk.api.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from kronk.errors import InvalidRequest, ModelNotFound
from kronk.telemetry import tracing

router = APIRouter()


def backend_of(request: Request) -> Backend:
    return get_backend(request.app.state.backend)


async def read_json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        raise InvalidRequest("the request body is empty; send a JSON object")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidRequest(f"the request body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def context_of(request: Request) -> RequestContext:
    """The request id (see kronk.api.middleware) and the trace context to continue in the replica:
    the current (HTTP request) span when tracing is on, else the client's own ``traceparent``."""
    return RequestContext(request_id=request_info(request).request_id,
                          traceparent=tracing.current_traceparent() or request.headers.get("traceparent"))


async def check_model(backend: Backend, model: str) -> None:
    ids = await backend.model_ids()
    if model not in ids:
        if any(m["name"] == model for m in await installed_models(backend)):
            raise ModelNotFound(f"The model '{model}' is installed but not served; start the server with it "
                                f"(kronk server start --model {model}). Served models: {', '.join(ids)}.",
                                param="model")
        raise ModelNotFound(f"The model '{model}' does not exist. Available models: {', '.join(ids) or 'none'}.",
                            param="model")


async def serve(request: Request, kind: str, schema: type[BaseModel]) -> Response:
    backend = backend_of(request)
    with tracing.span("kronk.route", attributes={"kronk.endpoint": kind}) as sp:
        body = await read_json(request)
        model = body.get("model")
        if isinstance(model, str) and model in await backend.model_ids():
            set_model(request, model)  # label this request's metrics, 4xx included, with a served model
        req = schema.model_validate(body)
        await check_model(backend, req.model)  # type: ignore[attr-defined]
        if sp is not None:
            sp.set_attributes({"kronk.model": req.model, "kronk.stream": bool(body.get("stream"))})  # type: ignore[attr-defined]
    items = backend.stream(req.model, kind, body, context_of(request))  # type: ignore[attr-defined]
    try:
        first = await items.__anext__()
    except BaseException:
        await items.aclose()
        raise
    if isinstance(first, dict):
        await items.aclose()
        return JSONResponse(first)
    return StreamingResponse(_sse(first, items, request_info(request).span), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _sse(first: str, items: AsyncIterator[Any], parent: Any = None) -> AsyncIterator[str]:
    """The SSE body; with tracing on, a ``kronk.stream_write`` span covers writing it to the client."""
    n, size, t0 = 0, 0, time.time_ns()
    try:
        n, size = 1, len(first)
        yield first
        async for item in items:
            n += 1
            size += len(item)
            yield item
    except Exception as e:  # mid-stream failure: tell the client in-band, then end the stream
        from kronk.api.errors import unwrap

        inner = unwrap(e)
        msg = getattr(inner, "message", None) or str(inner) or "generation failed"
        yield "data: " + json.dumps({"error": {"message": msg, "type": "server_error", "param": None,
                                               "code": getattr(inner, "code", None)}}) + "\n\n"
    finally:
        await items.aclose()
        if parent is not None:
            tracing.end_span(tracing.start_span("kronk.stream_write", parent, start_ns=t0),
                             attributes={"kronk.items": n, "kronk.chars": size})


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await serve(request, "chat", ChatCompletionRequest)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await serve(request, "completions", CompletionRequest)


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    return await serve(request, "embeddings", EmbeddingRequest)


def _unix(stamp: Any) -> int:
    """A manifest's ISO-8601 time as Unix seconds (OpenAI's `created`)."""
    try:
        return int(datetime.fromisoformat(str(stamp)).timestamp())
    except (TypeError, ValueError):
        return 0


async def installed_models(backend: Backend) -> list[dict[str, Any]]:
    try:
        return await backend.model_ops().call("list_models")  # type: ignore[attr-defined]
    except Exception:  # the store is informational here; never fail the listing
        return []


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Served models, then models installed on disk that no deployment serves (``served: false``)."""
    backend = backend_of(request)
    cards = [{**c, "served": True} for c in await backend.model_cards()]
    served = {c["id"] for c in cards}
    for m in await installed_models(backend):
        if m["name"] not in served:
            cards.append({"id": m["name"], "object": "model", "created": _unix(m.get("created_at")),
                          "owned_by": "kronk", "served": False, "status": "installed"})
    return {"object": "list", "data": cards}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    for card in await backend_of(request).model_cards():
        if card["id"] == model_id:
            return card
    await check_model(backend_of(request), model_id)
    raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")


def attach(app: FastAPI) -> None:
    app.include_router(router)
