"""``POST /v1/tokenize``, ``/v1/detokenize``, ``/v1/apply-template``, and llama-server's ``/tokenize``,
``/detokenize``, ``/apply-template``.

llama-server serves one model and its clients name none: a body without ``model`` means the one model this server
serves (with several, ``model`` is required).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from kronk.api.http import backend_of, handle, read_json
from kronk.api.schemas import json_body
from kronk.api.tokenize.schemas import ApplyTemplateRequest, DetokenizeRequest, TokenizeChatRequest, TokenizeRequest
from kronk.serving.call import Endpoint

router = APIRouter()


async def read_model_body(request: Request) -> dict[str, Any]:
    """The JSON body, its ``model`` filled in with the served model where it names none and only one is served."""
    body = await read_json(request)
    if "model" not in body:
        ids = await backend_of(request).model_ids()
        if len(ids) == 1:
            body["model"] = ids[0]
    return body


@router.post("/v1/tokenize", openapi_extra=json_body(TokenizeRequest))
@router.post("/tokenize", openapi_extra=json_body(TokenizeRequest))
async def tokenize(request: Request) -> Response:
    body = await read_model_body(request)
    schema = TokenizeChatRequest if "messages" in body else TokenizeRequest
    return await handle(request, Endpoint.TOKENIZE, schema, body=body)


@router.post("/v1/detokenize", openapi_extra=json_body(DetokenizeRequest))
@router.post("/detokenize", openapi_extra=json_body(DetokenizeRequest))
async def detokenize(request: Request) -> Response:
    return await handle(request, Endpoint.DETOKENIZE, DetokenizeRequest, body=await read_model_body(request))


@router.post("/v1/apply-template", openapi_extra=json_body(ApplyTemplateRequest))
@router.post("/apply-template", openapi_extra=json_body(ApplyTemplateRequest))
async def apply_template(request: Request) -> Response:
    return await handle(request, Endpoint.APPLY_TEMPLATE, ApplyTemplateRequest, body=await read_model_body(request))
