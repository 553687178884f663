"""What the HTTP routes talk to: a Backend finds a model and streams its items.

The Ray Serve ingress implements it over deployment handles
(``deployments/ingress.py``); :class:`LocalBackend` implements it in-process over
``ModelService`` objects (benchmarks, single-process use, fast API tests).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from kronk.api.service import ItemT, ModelService


@dataclass
class RequestContext:
    """The small, picklable part of an HTTP request that crosses into a replica."""

    request_id: str
    traceparent: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class Backend(Protocol):
    async def model_ids(self) -> list[str]:
        """Ids of the models that can be asked for now."""

    async def model_cards(self) -> list[dict[str, Any]]:
        """OpenAI model objects, with kronk's extra fields."""

    def stream(self, model: str, kind: str, body: dict[str, Any], ctx: RequestContext) -> AsyncIterator[ItemT]:
        """Items of one request (see ModelService.run)."""

    async def stats(self) -> dict[str, Any]:
        """Per-model statistics."""

    def model_ops(self) -> Any:
        """The model manager (pulls, store, catalog): a kronk.api.manage.ModelOps."""

    async def telemetry(self) -> list[dict[str, Any]]:
        """Every replica's metrics snapshot (kronk.telemetry.metrics.Recorder.snapshot)."""


_process_backend: Backend | None = None


def set_process_backend(backend: Backend) -> None:
    """The backend for apps created without one (Serve copies the app into its replica)."""
    global _process_backend
    _process_backend = backend


def get_backend(app_backend: Backend | None) -> Backend:
    b = app_backend or _process_backend
    if b is None:
        raise RuntimeError("no backend is configured for this app")
    return b


async def telemetry_of(backend: Backend) -> list[dict[str, Any]]:
    """The backend's snapshots; this process's front-end recorder alone for a backend without any."""
    from kronk.telemetry.metrics import process_recorder

    fn = getattr(backend, "telemetry", None)
    return await fn() if fn is not None else [process_recorder().snapshot()]


def context_dict(ctx: RequestContext) -> dict[str, Any]:
    """What crosses into a replica: the request id and the trace context (W3C traceparent)."""
    return {"request_id": ctx.request_id, "traceparent": ctx.traceparent}


def model_card(model_id: str, created: int, **extra: Any) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "kronk", **extra}


class LocalBackend:
    def __init__(self, services: dict[str, ModelService], settings: Any = None):
        self.services = services
        self.created = int(time.time())
        self.settings = settings
        self._ops = None

    def model_ops(self) -> Any:
        if self._ops is None:
            from kronk.api.manage import LocalModelOps
            from kronk.settings import load_settings
            from kronk.store.manager import ModelManager

            self._ops = LocalModelOps(ModelManager((self.settings or load_settings()).to_args()))
        return self._ops

    async def model_ids(self) -> list[str]:
        return list(self.services)

    async def model_cards(self) -> list[dict[str, Any]]:
        return [model_card(mid, self.created) for mid in self.services]

    async def stream(self, model: str, kind: str, body: dict[str, Any], ctx: RequestContext) -> AsyncIterator[ItemT]:
        gen = self.services[model].run(kind, body, context_dict(ctx))
        try:
            async for item in gen:
                yield item
        finally:
            await gen.aclose()

    async def telemetry(self) -> list[dict[str, Any]]:
        from kronk.telemetry.metrics import process_recorder

        snaps = [process_recorder().snapshot()]
        manager = getattr(self._ops, "manager", None)
        if manager is not None and getattr(manager, "recorder", None) is not None:
            snaps.append(manager.recorder.snapshot())
        for s in self.services.values():
            s.recorder.on_engine_stats(s.engine.stats())
            snaps.append(s.recorder.snapshot())
        return snaps

    async def stats(self) -> dict[str, Any]:
        """Same shape as the Serve backend's: per model, its engine's live stats and the aggregate."""
        from dataclasses import asdict

        from kronk.telemetry.stats import summarize

        agg = summarize(await self.telemetry())
        return {"models": {mid: {"model": mid, "replica": s.recorder.replica, "stats": asdict(s.engine.stats()),
                                 "replicas": 1, "aggregate": agg.get(mid)} for mid, s in self.services.items()}}
