"""``POST /v1/chat/completions``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from kronk.api.chat.schemas import ChatCompletionRequest
from kronk.api.http import handle
from kronk.serving.call import Endpoint

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await handle(request, Endpoint.CHAT, ChatCompletionRequest)
