"""``POST /v1/rerank``, ``/v1/reranking`` and ``/rerank`` (llama-server's paths)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from kronk.api.http import handle
from kronk.api.rerank.schemas import RerankRequest
from kronk.api.schemas import json_body
from kronk.api.tokenize.routes import read_model_body
from kronk.serving.call import Endpoint

router = APIRouter()


@router.post("/v1/rerank", openapi_extra=json_body(RerankRequest))
@router.post("/v1/reranking", openapi_extra=json_body(RerankRequest))
@router.post("/rerank", openapi_extra=json_body(RerankRequest))
async def rerank(request: Request) -> Response:
    return await handle(request, Endpoint.RERANK, RerankRequest, body=await read_model_body(request))
