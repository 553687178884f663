"""create_app(backend): the FastAPI application every HTTP front (Serve ingress, model replica, in-process) runs.

The app holds what it needs in ``app.state`` (its backend, its HTTP-side metrics
recorder); nothing is a module global, so every process, replica and test builds
its own app with this factory.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from kronk import __version__
from kronk.api import errors
from kronk.api.families import ROUTERS
from kronk.api.http import backend_of
from kronk.api.limits import Limits
from kronk.api.middleware import ObservabilityMiddleware
from kronk.security.access import Access
from kronk.security.auth import AccessMiddleware
from kronk.security.routes import router as whoami_router
from kronk.serving.backend import Backend
from kronk.telemetry import prometheus
from kronk.telemetry.board import snapshot_key
from kronk.telemetry.metrics import Recorder
from kronk.ui import mount_ui


async def all_snapshots(request: Request) -> list[dict[str, Any]]:
    """Every replica's metrics snapshot the backend knows of, with this front's own taken fresh."""
    own = request.app.state.recorder.snapshot()
    snaps = await backend_of(request).telemetry()
    return [s for s in snaps if snapshot_key(s) != snapshot_key(own)] + [own]


def create_app(backend: Backend, *, access: Access | None = None, recorder: Recorder | None = None,
               limits: Limits | None = None) -> FastAPI:
    """The app over ``backend``; ``access``: its keys, scopes, rate limits and allowed hosts
    (``Access.from_settings(settings)``; default: no keys, loopback Hosts only; see docs/security.md);
    ``recorder``: where its HTTP-side metrics go (default: a fresh ``ingress``/``local`` recorder)."""
    app = FastAPI(title="kronk", version=__version__, description="Local LLM model server (OpenAI-compatible)")
    app.state.backend = backend
    app.state.recorder = recorder or Recorder("ingress", "local")
    app.state.limits = limits or Limits()  # request limits (``Limits.from_settings(settings)``; docs/limits.md)
    errors.install(app)
    for r in ROUTERS:
        app.include_router(r)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        return {"status": "ok", "models": await backend_of(request).model_ids()}

    @app.get("/v1/stats")
    async def stats(request: Request) -> dict[str, Any]:
        return await backend_of(request).stats(await all_snapshots(request))

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """kronk's metrics in Prometheus text, gathered from every replica (see docs/observability.md)."""
        return Response(prometheus.render(await all_snapshots(request)), media_type=prometheus.CONTENT_TYPE)

    access = access if access is not None else Access()
    app.include_router(whoami_router)
    mount_ui(app, keys_on=access.keys_on)  # GET / -> /ui/, the browser UI's static files (kronk/ui)
    app.add_middleware(AccessMiddleware, access=access)
    app.add_middleware(ObservabilityMiddleware, recorder=app.state.recorder)  # outermost: ids, spans, counts
    return app
