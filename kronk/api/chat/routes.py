"""``POST /v1/chat/completions``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from kronk.api.chat.schemas import ChatCompletionRequest
from kronk.api.http import handle
from kronk.api.schemas import json_body
from kronk.serving.call import Endpoint

router = APIRouter()


@router.post("/v1/chat/completions", openapi_extra=json_body(ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    return await handle(request, Endpoint.CHAT, ChatCompletionRequest)
