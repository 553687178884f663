"""create_app(backend): the FastAPI application every front end (Serve ingress, in-process) uses."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from kronk import __version__
from kronk.api import errors, manage, openai
from kronk.api.backend import Backend, telemetry_of
from kronk.api.middleware import ObservabilityMiddleware
from kronk.api.openai import backend_of
from kronk.security.auth import ApiKeyMiddleware
from kronk.telemetry import prometheus


def create_app(backend: Backend | None = None, extra_routers: list[Any] | None = None,
               api_keys: list[str] | None = None) -> FastAPI:
    """The app; ``api_keys`` None means the process-wide keys (set by the Serve ingress)."""
    app = FastAPI(title="kronk", version=__version__, description="Local LLM model server (OpenAI-compatible)")
    app.state.backend = backend
    errors.install(app)
    manage.attach(app)  # before openai: /v1/models/pull must win over /v1/models/{id}
    openai.attach(app)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        ids = await backend_of(request).model_ids()
        return {"status": "ok", "models": ids}

    @app.get("/v1/stats")
    async def stats(request: Request) -> dict[str, Any]:
        return await backend_of(request).stats()

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """kronk's metrics in Prometheus text, gathered from every replica (see docs/observability.md)."""
        snapshots = await telemetry_of(backend_of(request))
        return Response(prometheus.render(snapshots), media_type=prometheus.CONTENT_TYPE)

    for r in extra_routers or []:
        app.include_router(r)
    app.add_middleware(ApiKeyMiddleware, keys=api_keys)
    app.add_middleware(ObservabilityMiddleware)  # outermost: request ids, spans and counts for every answer
    return app
