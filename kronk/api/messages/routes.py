"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``, answered in Anthropic's shapes: errors as
``{"type": "error", "error": {"type", "message"}}`` with Anthropic's error types (:data:`WIRE`, registered for
the paths in kronk/api/families.py), a mid-stream failure as an ``error`` event. The ``anthropic-version`` and
``anthropic-beta`` headers are accepted and ignored; ``x-api-key`` is a key as ``Authorization: Bearer`` is
(kronk/security/auth.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from kronk.api.http import handle
from kronk.api.messages.schemas import CountTokensRequest, MessagesRequest
from kronk.api.messages.serving import event
from kronk.api.schemas import json_body
from kronk.api.wire import Wire
from kronk.serving.call import Endpoint
from kronk.serving.items import Failure

router = APIRouter()

PREFIX = "/v1/messages"
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               503: "overloaded_error", 529: "overloaded_error"}


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status (another 4xx: invalid_request_error; another 5xx: api_error)."""
    return ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(f: Failure) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(f.status), "message": f.message}}


def error_event(f: Failure) -> str:
    return event("error", error_body(f))


WIRE = Wire(error_body=error_body, stream_error=error_event)


@router.post(PREFIX, openapi_extra=json_body(MessagesRequest))
async def messages(request: Request) -> Response:
    return await handle(request, Endpoint.MESSAGES, MessagesRequest)


@router.post(PREFIX + "/count_tokens", openapi_extra=json_body(CountTokensRequest))
async def count_tokens(request: Request) -> Response:
    return await handle(request, Endpoint.MESSAGES_COUNT_TOKENS, CountTokensRequest)
