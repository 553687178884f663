"""Ollama's native API: ``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/embeddings``, ``/api/version``,
``HEAD /`` and ``GET /``, and the model routes of kronk/api/ollama/models.py.

A route validates the body as Ollama writes it (kronk/api/ollama/schemas.py), maps the model name
(kronk/api/ollama/names.py), answers Ollama's load idiom (no messages, or an empty prompt: load the model;
``keep_alive: 0``: unload it) itself, and sends everything else to the model as a call of its own endpoint
(kronk/api/ollama/serving.py). Errors on ``/api/`` are Ollama's ``{"error": "..."}`` (:data:`WIRE`).
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ValidationError

from kronk.api.errors import validation_response
from kronk.api.http import backend_of, check_model, handle, limits_of, read_json
from kronk.api.ollama.models import router as models_router
from kronk.api.ollama.names import resolve
from kronk.api.ollama.schemas import (
    MAPPED_FROM,
    ChatBody,
    EmbedBody,
    EmbeddingsBody,
    GenerateBody,
    OllamaEmbed,
    OllamaRaw,
    OllamaTurn,
    raw_body,
    turn_body,
)
from kronk.api.ollama.serving import Shaper
from kronk.api.schemas import json_body
from kronk.api.wire import Wire, wire_for
from kronk.errors import Unsupported
from kronk.serving.call import Endpoint
from kronk.serving.items import Failure
from kronk.serving.pool import NotInPool, parse_duration

# What /api/version says. Clients gate features on Ollama's version (tools from 0.3, structured outputs from
# 0.5, think from 0.9); this is a released Ollama version past all of them, which the ollama Python client
# and OpenWebUI take as a current server.
OLLAMA_VERSION = "0.12.6"


def _error_body(f: Failure) -> dict[str, Any]:
    return {"error": f.message}


def _stream_error(f: Failure) -> str:
    return json.dumps({"error": f.message}, ensure_ascii=False) + "\n"


WIRE = Wire(media_type="application/x-ndjson", error_body=_error_body, stream_error=_stream_error)

router = APIRouter()


def _validate(schema: type[BaseModel], body: dict[str, Any], request: Request) -> Any:
    return schema.model_validate(body, context={"limits": limits_of(request)})


async def _run(request: Request, endpoint: Endpoint, schema: type[BaseModel], mapped: dict[str, Any]) -> Response:
    """The mapped request as a call; a 400 on a mapped field names the field the client sent."""
    try:
        return await handle(request, endpoint, schema, body=mapped)
    except ValidationError as e:
        errors = []
        for err in e.errors():
            loc = tuple(err.get("loc", ()))
            if loc and loc[0] in MAPPED_FROM:
                loc = (MAPPED_FROM[loc[0]], *loc[1:])
            errors.append({**err, "loc": loc})
        return validation_response(errors, wire_for(request.url.path))


async def _load(request: Request, model: str, name: str, keep_alive: float | str | None, shape: str) -> Response:
    """Ollama's load idiom: a request without messages (or prompt) loads the model and answers ``done``;
    with ``keep_alive: 0`` it unloads it (a pinned model cannot be: 409)."""
    backend = backend_of(request)
    await check_model(backend, model)
    t0 = time.perf_counter_ns()
    keep = parse_duration(keep_alive) if keep_alive is not None else None
    pinned = model in await backend.model_ids()
    if keep == 0:
        try:
            await backend.unload_model(model)
        except NotInPool:
            pass  # not loaded: nothing to unload
        reason = "unload"
    else:
        if not pinned:
            await backend.load_model(model, keep)
        reason = "load"
    elapsed = time.perf_counter_ns() - t0
    return JSONResponse(Shaper(name, shape).piece(done={
        "done": True, "done_reason": reason, "total_duration": elapsed,
        "load_duration": elapsed if reason == "load" else 0}))


@router.post("/api/chat", openapi_extra=json_body(ChatBody))
async def chat(request: Request) -> Response:
    req: ChatBody = _validate(ChatBody, await read_json(request), request)
    model = await resolve(backend_of(request), req.model_name)
    if not req.messages:
        return await _load(request, model, req.model_name, req.keep_alive, "chat")
    return await _run(request, Endpoint.OLLAMA_CHAT, OllamaTurn, turn_body(req, model))


@router.post("/api/generate", openapi_extra=json_body(GenerateBody))
async def generate(request: Request) -> Response:
    req: GenerateBody = _validate(GenerateBody, await read_json(request), request)
    model = await resolve(backend_of(request), req.model_name)
    if req.empty:
        return await _load(request, model, req.model_name, req.keep_alive, "generate")
    if req.raw:
        if req.images:
            raise Unsupported("images are not supported with raw: true", param="images")
        return await _run(request, Endpoint.OLLAMA_GENERATE, OllamaRaw, raw_body(req, model))
    return await _run(request, Endpoint.OLLAMA_GENERATE, OllamaTurn, turn_body(req, model))


def _embed_call(req: EmbedBody | EmbeddingsBody, model: str, inputs: str | list[str], legacy: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "input": inputs, "legacy": legacy,
                           "ollama": {"name": req.model_name, "shape": "generate"}}
    if isinstance(req, EmbedBody):
        out["truncate"] = req.truncate
        if req.dimensions is not None:
            out["dimensions"] = req.dimensions
    if req.keep_alive is not None:
        out["keep_alive"] = req.keep_alive
    return out


@router.post("/api/embed", openapi_extra=json_body(EmbedBody))
async def embed(request: Request) -> Response:
    req: EmbedBody = _validate(EmbedBody, await read_json(request), request)
    model = await resolve(backend_of(request), req.model_name)
    if not req.input:  # Ollama: nothing to embed answers no vectors
        await check_model(backend_of(request), model)
        return JSONResponse({"model": req.model_name, "embeddings": [], "total_duration": 0, "load_duration": 0,
                             "prompt_eval_count": 0})
    return await _run(request, Endpoint.OLLAMA_EMBED, OllamaEmbed, _embed_call(req, model, req.input, False))


@router.post("/api/embeddings", openapi_extra=json_body(EmbeddingsBody))
async def embeddings(request: Request) -> Response:
    """The legacy route: one prompt, one (normalized) vector."""
    req: EmbeddingsBody = _validate(EmbeddingsBody, await read_json(request), request)
    model = await resolve(backend_of(request), req.model_name)
    if not req.prompt:
        await check_model(backend_of(request), model)
        return JSONResponse({"embedding": []})
    return await _run(request, Endpoint.OLLAMA_EMBED, OllamaEmbed, _embed_call(req, model, req.prompt, True))


@router.get("/api/version")
async def version() -> dict[str, str]:
    return {"version": OLLAMA_VERSION}


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def probe() -> Response:
    """Ollama's liveness probe (its CLI sends ``HEAD /``)."""
    return PlainTextResponse("Ollama is running")


router.include_router(models_router)
