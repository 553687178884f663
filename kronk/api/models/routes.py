"""Models: ``GET /v1/models[/{id}]`` (served models, then installed ones), pulls, removal, catalog, the store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from kronk.api.http import backend_of, check_model, installed_models, limits_of, ops_of, read_json
from kronk.api.models.schemas import PullRequest
from kronk.api.schemas import json_body
from kronk.errors import ModelNotFound, NotFound
from kronk.security.auth import ADMIN_ONLY
from kronk.serving.backend import ModelOps
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


# ---- the served models
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
    backend = backend_of(request)
    for card in await backend.model_cards():
        if card["id"] == model_id:
            return card
    await check_model(backend, model_id)
    raise ModelNotFound(f"The model '{model_id}' does not exist.", param="model")


@router.delete("/v1/models/{model_id:path}", dependencies=ADMIN_ONLY)
async def remove(model_id: str, request: Request) -> dict[str, Any]:
    """Delete an installed model; 409 while a served model uses its files (its replicas map them: deleting
    them under a running engine, on shared storage on other nodes too, can crash it)."""
    ops = ops_of(request)
    served = await backend_of(request).model_ids()
    if served and (user := await ops.call("served_as", model_id, served)) is not None:
        alias = f" (as {user!r})" if user != model_id else ""
        raise ModelInUse(f"model {model_id!r} is being served{alias}: stop serving it (take it out of the server's "
                         "models and restart) before deleting its files", param="model")
    if not await ops.call("remove", model_id):
        raise NotFound(f"model {model_id!r} is not installed", param="model")
    return {"id": model_id, "object": "model", "deleted": True}
