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
        gen = self.services[model].run(kind, body)
        try:
            async for item in gen:
                yield item
        finally:
            await gen.aclose()

    async def stats(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"models": {mid: asdict(s.engine.stats()) for mid, s in self.services.items()}}
