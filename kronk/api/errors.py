"""Every error as an answer: the OpenAI envelope ``{"error": {"message", "type", "param", "code"}}``, or the error
shape of the family whose path was asked for (kronk/api/wire.py)."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from kronk.api.wire import OPENAI, Wire, wire_for
from kronk.errors import ErrorKind, KronkError
from kronk.serving.items import Failure

log = logging.getLogger("kronk.api")


def envelope(status: int, message: str, type_: str, param: str | None = None, code: str | None = None,
             headers: dict[str, str] | None = None, wire: Wire = OPENAI) -> JSONResponse:
    return wire.error_response(Failure(status, type_, message, param, code), headers)


def unwrap(exc: BaseException) -> BaseException:
    """The original error behind a wrapper (Ray wraps replica exceptions in RayTaskError)."""
    for _ in range(5):
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException) or cause is exc:
            break
        exc = cause
    return exc


def kronk_error_response(exc: KronkError, wire: Wire = OPENAI) -> JSONResponse:
    return wire.error_response(Failure.of(exc))


def validation_response(errors: list[dict], wire: Wire = OPENAI) -> JSONResponse:
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    # drop pydantic's union-branch names (e.g. "str", "list[...]") from the path
    loc = [p for p in loc if not any(ch in p for ch in "[]") and p not in ("str", "int", "float", "bool")]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    text = f"{param}: {msg}" if param else msg
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    code = "missing_required_parameter" if first.get("type") == "missing" else "invalid_value"
    return envelope(400, text, ErrorKind.INVALID_REQUEST.type, param, code, wire=wire)


def install(app: FastAPI) -> None:
    @app.exception_handler(KronkError)
    async def _kronk(request: Request, exc: KronkError) -> JSONResponse:
        return kronk_error_response(exc, wire_for(request.url.path))

    @app.exception_handler(ValidationError)
    async def _pydantic(request: Request, exc: ValidationError) -> JSONResponse:
        return validation_response(exc.errors(), wire_for(request.url.path))

    @app.exception_handler(RequestValidationError)
    async def _fastapi(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(list(exc.errors()), wire_for(request.url.path))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        msg = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and msg == "Not Found":
            msg = ("no such endpoint; see /v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings, "
                   "/v1/responses, /v1/messages, /v1/rerank, /v1/tokenize, /api/* (Ollama) and docs/api.md")
        return envelope(exc.status_code, msg, type_, None, None, headers=getattr(exc, "headers", None),
                        wire=wire_for(request.url.path))

    @app.exception_handler(Exception)
    async def _any(request: Request, exc: Exception) -> JSONResponse:
        wire = wire_for(request.url.path)
        inner = unwrap(exc)
        if isinstance(inner, KronkError):
            return kronk_error_response(inner, wire)
        if isinstance(inner, ValidationError):
            return validation_response(inner.errors(), wire)
        ref = uuid.uuid4().hex[:12]
        log.exception("internal error %s", ref)
        return envelope(500, f"internal server error (reference {ref})", "server_error", None, "internal_error",
                        wire=wire)
