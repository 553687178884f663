"""The OpenAI routes: thin handlers that validate, find the model and stream its items."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from kronk.api.backend import Backend, RequestContext, get_backend
from kronk.api.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from kronk.errors import InvalidRequest, ModelNotFound

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
    rid = request.headers.get("x-request-id") or uuid.uuid4().hex
    return RequestContext(request_id=rid, traceparent=request.headers.get("traceparent"))


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
    body = await read_json(request)
    req = schema.model_validate(body)
    backend = backend_of(request)
    await check_model(backend, req.model)  # type: ignore[attr-defined]
    items = backend.stream(req.model, kind, body, context_of(request))  # type: ignore[attr-defined]
    try:
        first = await items.__anext__()
    except BaseException:
        await items.aclose()
        raise
    if isinstance(first, dict):
        await items.aclose()
        return JSONResponse(first)
    return StreamingResponse(_sse(first, items), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _sse(first: str, items: AsyncIterator[Any]) -> AsyncIterator[str]:
    try:
        yield first
        async for item in items:
            yield item
    except Exception as e:  # mid-stream failure: tell the client in-band, then end the stream
        from kronk.api.errors import unwrap

        inner = unwrap(e)
        msg = getattr(inner, "message", None) or str(inner) or "generation failed"
        yield "data: " + json.dumps({"error": {"message": msg, "type": "server_error", "param": None,
                                               "code": getattr(inner, "code", None)}}) + "\n\n"
    finally:
        await items.aclose()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await serve(request, "chat", ChatCompletionRequest)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await serve(request, "completions", CompletionRequest)


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    return await serve(request, "embeddings", EmbeddingRequest)


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
            cards.append({"id": m["name"], "object": "model", "created": int(m.get("created_at") or 0),
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
