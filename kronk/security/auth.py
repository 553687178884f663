"""API keys: required from every client that is not on this machine, when any are configured.

Keys come from the ``api_keys`` setting (``KRONK_API_KEYS`` as a JSON list or a
comma-separated string). Clients send ``Authorization: Bearer <key>`` (what the
OpenAI SDK sends) or ``x-api-key: <key>`` (the Anthropic SDK's header). Requests
from loopback addresses need no key, so a laptop user is never locked out of
their own server; ``/health`` is always open for probes.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from kronk.errors import Unauthorized

LOCAL_HOSTS = {"127.0.0.1", "::1", "localhost"}
OPEN_PATHS = {"/health"}

def _presented(scope: Scope) -> str | None:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-key")


class ApiKeyMiddleware:
    def __init__(self, app: ASGIApp, keys: Iterable[str] = ()):
        self.app = app
        self.keys = [k for k in keys if k]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        keys = self.keys
        if scope["type"] != "http" or not keys or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        client = scope.get("client") or ("", 0)
        if client[0] in LOCAL_HOSTS:
            await self.app(scope, receive, send)
            return
        got = _presented(scope)
        if got is None or not any(hmac.compare_digest(got, k) for k in keys):
            msg = ("An API key is required: send 'Authorization: Bearer <key>'." if got is None
                   else "The API key is not valid.")
            err = Unauthorized(msg)
            resp = JSONResponse({"error": err.to_dict()}, status_code=err.kind.status,
                                headers={"WWW-Authenticate": "Bearer"})
            await resp(scope, receive, send)
            return
        await self.app(scope, receive, send)
