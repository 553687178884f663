"""Model management routes: pulls (jobs that outlive their client), removal, catalog, installed models."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from kronk.api.openai import backend_of, read_json
from kronk.errors import NotFound
from kronk.telemetry import tracing

router = APIRouter()

TERMINAL = ("succeeded", "failed", "cancelled")


class ModelOps(Protocol):
    """The model manager's calls (see kronk.store.manager.ModelManager), awaitable."""

    async def call(self, method: str, *args: Any) -> Any: ...


class LocalModelOps:
    """The model manager in this process (its calls block, so they run in threads)."""

    def __init__(self, manager: Any):
        self.manager = manager

    async def call(self, method: str, *args: Any) -> Any:
        return await asyncio.to_thread(getattr(self.manager, method), *args)


class PullRequest(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    model: str = Field(min_length=1, description="A catalog name, hf.co/<org>/<repo>/<file.gguf> or "
                       "hf.co/<org>/<repo>:<QUANT>", validation_alias="model")
    stream: bool = False


def ops_of(request: Request) -> ModelOps:
    return backend_of(request).model_ops()  # type: ignore[attr-defined]


async def _progress(ops: ModelOps, job: dict[str, Any], interval: float = 0.5) -> AsyncIterator[str]:
    """Progress events until the job ends. A client that leaves stops only its own stream, not the job."""
    while True:
        yield "data: " + json.dumps(job) + "\n\n"
        if job["status"] in TERMINAL:
            yield "data: [DONE]\n\n"
            return
        await asyncio.sleep(interval)
        job = await ops.call("job", job["id"]) or job


@router.post("/v1/models/pull")
async def pull(request: Request) -> Any:
    body = await read_json(request)
    if "model" not in body and "name" in body:  # Ollama spelling
        body["model"] = body["name"]
    req = PullRequest.model_validate(body)
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


@router.delete("/v1/models/pull/{job_id}")
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


@router.delete("/v1/models/{model_id:path}")
async def remove(model_id: str, request: Request) -> dict[str, Any]:
    ops = ops_of(request)
    if not await ops.call("remove", model_id):
        raise NotFound(f"model {model_id!r} is not installed", param="model")
    return {"id": model_id, "object": "model", "deleted": True}


@router.get("/v1/catalog")
async def catalog(request: Request, family: str | None = None, capability: str | None = None) -> dict[str, Any]:
    return {"object": "list", "data": await ops_of(request).call("catalog", family, capability)}


def attach(app: FastAPI) -> None:
    app.include_router(router)
