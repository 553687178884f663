"""``POST /v1/embeddings``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from kronk.api.embeddings.schemas import EmbeddingRequest
from kronk.api.http import handle
from kronk.api.schemas import json_body
from kronk.serving.call import Endpoint

router = APIRouter()


@router.post("/v1/embeddings", openapi_extra=json_body(EmbeddingRequest))
async def embeddings(request: Request) -> Response:
    return await handle(request, Endpoint.EMBEDDINGS, EmbeddingRequest)
