"""``POST /v1/completions``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from kronk.api.completions.schemas import CompletionRequest
from kronk.api.http import handle
from kronk.api.schemas import json_body
from kronk.serving.call import Endpoint

router = APIRouter()


@router.post("/v1/completions", openapi_extra=json_body(CompletionRequest))
async def completions(request: Request) -> Response:
    return await handle(request, Endpoint.COMPLETIONS, CompletionRequest)
