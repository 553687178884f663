"""Models: ``GET /v1/models[/{id}]`` (pinned models, then installed ones with their pool state), load/unload and
the state events, pulls, removal, catalog, the store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from kronk.api.http import backend_of, check_model, installed_models, limits_of, offline_models, ops_of, read_json
from kronk.api.models.schemas import LoadRequest, PullRequest
from kronk.api.schemas import json_body
from kronk.errors import InvalidRequest, ModelNotFound, NotFound, Pinned
from kronk.security.auth import ADMIN_ONLY
from kronk.serving.backend import ModelOps
from kronk.serving.pool import NotInPool
from kronk.store.errors import ModelInUse
from kronk.telemetry import tracing

router = APIRouter()

TERMINAL = ("succeeded", "failed", "cancelled")


def _unix(stamp: Any) -> int:
    """A manifest's ISO-8601 time as Unix seconds (OpenAI's `created`)."""
    try:
        return int(datetime.fromisoformat(str(stamp)).timestamp())
    except (TypeError, ValueError):
        return 0


async def _progress(ops: ModelOps, job: dict[str, Any], interval: float = 0.5) -> AsyncIterator[str]:
    """Progress events until the job ends. A client that leaves stops only its own stream, not the job."""
    while True:
        yield "data: " + json.dumps(job) + "\n\n"
        if job["status"] in TERMINAL:
            yield "data: [DONE]\n\n"
            return
        await asyncio.sleep(interval)
        job = await ops.call("job", job["id"]) or job


# ---- pulls and the store: before /v1/models/{id}, which would otherwise take /v1/models/pull
@router.post("/v1/models/pull", dependencies=ADMIN_ONLY, openapi_extra=json_body(PullRequest))
async def pull(request: Request) -> Any:
    body = await read_json(request)
    if "model" not in body and "name" in body:  # Ollama spelling
        body["model"] = body["name"]
    req = PullRequest.model_validate(body, context={"limits": limits_of(request)})
    ops = ops_of(request)
    trace = tracing.carrier()  # the pull's spans continue this request's trace in the model manager
    job = await (ops.call("pull", req.model, trace) if trace else ops.call("pull", req.model))
    if req.stream:
        return StreamingResponse(_progress(ops, job), media_type="text/event-stream")
    return job


@router.get("/v1/models/pull")
async def pull_jobs(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": await ops_of(request).call("jobs")}


@router.get("/v1/models/pull/{job_id}")
async def pull_job(job_id: str, request: Request, stream: bool = False) -> Any:
    ops = ops_of(request)
    job = await ops.call("job", job_id)
    if job is None:
        raise NotFound(f"no pull job {job_id!r}", param="job_id")
    if stream:
        return StreamingResponse(_progress(ops, job), media_type="text/event-stream")
    return job


@router.delete("/v1/models/pull/{job_id}", dependencies=ADMIN_ONLY)
async def cancel_pull(job_id: str, request: Request) -> dict[str, Any]:
    ops = ops_of(request)
    if await ops.call("job", job_id) is None:
        raise NotFound(f"no pull job {job_id!r}", param="job_id")
    await ops.call("cancel", job_id)
    return await ops.call("job", job_id)


@router.get("/v1/store/models")
async def installed(request: Request) -> dict[str, Any]:
    """Models on disk (the store), whether served or not."""
    return {"object": "list", "data": await ops_of(request).call("list_models")}


@router.get("/v1/catalog")
async def catalog(request: Request, family: str | None = None, capability: str | None = None) -> dict[str, Any]:
    return {"object": "list", "data": await ops_of(request).call("catalog", family, capability)}


# ---- the served models: pinned ones, then every installed one (served on demand by the pool, when it is on)
def _pool_by_model(states: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for st in states:
        out.setdefault(st["model"], []).append(st)
    return out


def _pool_card(name: str, created: int, states: list[dict[str, Any]], on_demand: bool) -> dict[str, Any]:
    """An installed model's card: its state across the pool's replicas (loaded on which, loading, error, or
    available to load on its first request)."""
    loaded = [st for st in states if st["state"] == "loaded"]
    loading = [st for st in states if st["state"] == "loading"]
    state = "loaded" if loaded else "loading" if loading else "error" if states else "available"
    card: dict[str, Any] = {"id": name, "object": "model", "created": created, "owned_by": "kronk",
                            "served": on_demand, "pinned": False, "state": state if on_demand else "installed",
                            "status": ("ready" if loaded else state) if on_demand else "installed"}
    if loaded or loading:
        card["loaded_on"] = [{k: st.get(k) for k in ("replica", "state", "active", "keep_alive_s", "expires_in_s",
                                                     "load_s", "settings") if k in st} for st in loaded + loading]
    errors = [st.get("error") for st in states if st.get("error")]
    if errors and not loaded:
        card["error"] = errors[0]
    return card


async def _cards(request: Request) -> list[dict[str, Any]]:
    backend = backend_of(request)
    on_demand = bool(getattr(backend, "on_demand", False))
    cards = [{**c, "served": True, "pinned": True, "state": "error" if c.get("error") else
              "available" if c.get("status") == "scaled_to_zero" else "loaded"} for c in await backend.model_cards()]
    served = {c["id"] for c in cards}
    pool = _pool_by_model(await backend.pool_states()) if on_demand else {}
    for m in await installed_models(backend):
        if m["name"] not in served:
            cards.append(_pool_card(m["name"], _unix(m.get("created_at")), pool.get(m["name"], []), on_demand))
            served.add(m["name"])
    if on_demand:  # catalog models in installed PyPI packages: their first request puts them in the store
        cards += [_pool_card(name, 0, pool.get(name, []), on_demand) for name in await offline_models(backend)
                  if name not in served]
    return cards


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Pinned models, then the installed ones: each with its ``state`` (loaded, loading, available, error)."""
    return {"object": "list", "data": await _cards(request)}


@router.get("/v1/models/events")
async def model_events(request: Request) -> StreamingResponse:
    """Server-Sent Events of the pool's model state changes: loading, loaded, unloaded, evicted, error."""
    backend = backend_of(request)

    async def events() -> AsyncIterator[str]:
        yield ": kronk model events\n\n"  # the stream is open
        async for event in backend.model_events():
            yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _keep_alive_body(request: Request) -> float | None:
    body = await read_json(request) if int(request.headers.get("content-length") or 0) else {}
    try:
        req = LoadRequest.model_validate(body)
    except ValidationError as e:
        raise InvalidRequest(str(e.errors()[0]["msg"]), param="keep_alive") from None
    return req.keep_alive


@router.post("/v1/models/{model_id:path}/load", dependencies=ADMIN_ONLY)
async def load_model(model_id: str, request: Request) -> dict[str, Any]:
    """Load an installed model into the pool now (its keep-alive from the body's ``keep_alive``)."""
    keep = await _keep_alive_body(request)
    backend = backend_of(request)
    await check_model(backend, model_id)
    return await backend.load_model(model_id, keep)


@router.post("/v1/models/{model_id:path}/unload", dependencies=ADMIN_ONLY)
async def unload_model(model_id: str, request: Request) -> dict[str, Any]:
    """Unload a pool model (once its running requests end)."""
    backend = backend_of(request)
    await check_model(backend, model_id)
    return await backend.unload_model(model_id)


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    backend = backend_of(request)
    for card in await _cards(request):
        if card["id"] == model_id:
            return card
    await check_model(backend, model_id)
    raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")


async def _pool_loaded(backend: Any, model: str) -> bool:
    return any(st["model"] == model and st["state"] in ("loaded", "loading") for st in await backend.pool_states())


@router.delete("/v1/models/{model_id:path}", dependencies=ADMIN_ONLY)
async def remove(model_id: str, request: Request) -> dict[str, Any]:
    """Delete an installed model; 409 while a served model uses its files (its replicas map them: deleting
    them under a running engine, on shared storage on other nodes too, can crash it)."""
    ops = ops_of(request)
    backend = backend_of(request)
    if getattr(backend, "on_demand", False) and await _pool_loaded(backend, model_id):
        try:  # a pool model is unloaded first; one with running requests is in use
            await backend.unload_model(model_id)
        except (Pinned, NotInPool):
            pass
        if await _pool_loaded(backend, model_id):
            raise ModelInUse(f"model {model_id!r} is answering requests: delete it once they end", param="model")
    served = await backend.model_ids()
    if served and (user := await ops.call("served_as", model_id, served)) is not None:
        alias = f" (as {user!r})" if user != model_id else ""
        raise ModelInUse(f"model {model_id!r} is being served{alias}: stop serving it (take it out of the server's "
                         "models and restart) before deleting its files", param="model")
    if not await ops.call("remove", model_id):
        raise NotFound(f"model {model_id!r} is not installed", param="model")
    return {"id": model_id, "object": "model", "deleted": True}
