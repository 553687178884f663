"""How an endpoint family writes its answers: its stream's media type and how an error looks (a JSON body with
the status before the first byte; an in-band event mid-stream).

OpenAI's wire is the default: ``{"error": {...}}`` and an SSE ``data:`` event. A family whose clients expect
their own (Anthropic's ``{"type": "error", "error": {...}}``, Ollama's ``{"error": "..."}`` and NDJSON) registers
its wire for its path prefixes in kronk/api/families.py; every error answer (a validation error, a refused key, a
failure from the replica) is written with the wire of the request's path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse

from kronk.serving.items import Failure


def _openai_body(f: Failure) -> dict[str, Any]:
    return f.envelope()


def _openai_event(f: Failure) -> str:
    return f.sse()


@dataclass(frozen=True)
class Wire:
    media_type: str = "text/event-stream"
    error_body: Callable[[Failure], dict[str, Any]] = _openai_body
    stream_error: Callable[[Failure], str] = _openai_event
    headers: dict[str, str] = field(default_factory=lambda: {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def error_response(self, f: Failure, headers: dict[str, str] | None = None) -> JSONResponse:
        merged = {**(f.headers() or {}), **(headers or {})}
        return JSONResponse(self.error_body(f), status_code=f.status, headers=merged or None)


OPENAI = Wire()
_BY_PREFIX: list[tuple[str, Wire]] = []


def register(prefix: str, wire: Wire) -> None:
    """Answer the paths under ``prefix`` (e.g. ``/v1/messages``, ``/api/``) with ``wire``; the longest prefix wins."""
    _BY_PREFIX[:] = sorted([*(p for p in _BY_PREFIX if p[0] != prefix), (prefix, wire)], key=lambda p: -len(p[0]))


def wire_for(path: str) -> Wire:
    for prefix, wire in _BY_PREFIX:
        if path.startswith(prefix):
            return wire
    return OPENAI
