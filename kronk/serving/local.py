"""The in-process backend: models that live in this process.

Used by the one-model replica that takes HTTP itself (its one model is the replica
it runs in: ``deployments/server.py``), by benchmarks and by the one-process API
tests (:meth:`LocalBackend.of_services`). What differs between those — where the
model manager is, where other replicas' numbers come from, how many replicas run —
is passed in; the rest is the same code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from kronk.errors import ModelNotFound
from kronk.serving.backend import ModelOps, model_card, stats_of
from kronk.serving.call import Call
from kronk.serving.items import Failure, Item
from kronk.serving.pool import ModelPool, not_for_pool
from kronk.serving.replica import ModelReplica, replica_info, replica_snapshot
from kronk.serving.service import ModelService


class ModelHost(Protocol):
    """A model in this process: a ModelReplica, or the Serve replica that runs the app."""

    def stream(self, call: Call) -> AsyncIterator[Item]: ...

    async def info(self) -> dict[str, Any]: ...


class LocalModelOps:
    """The model manager in this process (its calls block, so they run in threads)."""

    def __init__(self, manager: Any):
        self.manager = manager

    async def call(self, method: str, *args: Any) -> Any:
        return await asyncio.to_thread(getattr(self.manager, method), *args)


class LocalBackend:
    def __init__(self, models: Mapping[str, ModelHost], *, ops: Callable[[], ModelOps],
                 telemetry: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None,
                 replicas: Callable[[], Awaitable[dict[str, int]]] | None = None, pool: ModelPool | None = None):
        """``ops`` makes the model manager's client on first use; ``telemetry`` gives every replica's snapshot
        (default: these models' own); ``replicas`` the running replicas per model (default: one each);
        ``pool`` serves the installed models that ``models`` does not pin, on demand."""
        self.models = dict(models)
        self.pool = pool
        self.created = int(time.time())
        self._make_ops = ops
        self._ops: ModelOps | None = None
        self._telemetry = telemetry
        self._replicas = replicas

    @classmethod
    def of_services(cls, services: Mapping[str, ModelService], settings: Any) -> LocalBackend:
        """Models served in this process, with a model manager of its own over ``settings``' store."""

        def ops() -> ModelOps:
            from kronk.store.manager import ModelManager

            return LocalModelOps(ModelManager(settings.to_args()))

        return cls({m: ModelReplica(s) for m, s in services.items()}, ops=ops)

    def model_ops(self) -> ModelOps:
        if self._ops is None:
            self._ops = self._make_ops()
        return self._ops

    @property
    def on_demand(self) -> bool:
        return self.pool is not None

    async def model_ids(self) -> list[str]:
        return list(self.models)

    async def _infos(self) -> dict[str, dict[str, Any]]:
        infos = {m: await host.info() for m, host in self.models.items()}
        if self.pool is not None:
            infos.update({m: replica_info(s) for m, s in self.pool.services().items() if m not in infos})
        return infos

    async def pool_states(self) -> list[dict[str, Any]]:
        return self.pool.states() if self.pool is not None else []

    async def load_model(self, model: str, keep_alive_s: float | None = None) -> dict[str, Any]:
        return await self._pool(model).load(model, keep_alive_s)

    async def unload_model(self, model: str) -> dict[str, Any]:
        return await self._pool(model).unload(model)

    def _pool(self, model: str) -> ModelPool:
        if model in self.models or self.pool is None:
            raise not_for_pool(model, pinned=model in self.models)
        return self.pool

    async def model_events(self) -> AsyncIterator[dict[str, Any]]:
        if self.pool is None:
            return
        q = self.pool.subscribe()
        try:
            while True:
                yield await q.get()
        finally:
            self.pool.unsubscribe(q)

    async def model_cards(self) -> list[dict[str, Any]]:
        """The pinned models' cards (the pool's are made from its states)."""
        return [model_card(m, self.created, await host.info()) for m, host in self.models.items()]

    async def stream(self, call: Call) -> AsyncIterator[Item]:
        host = self.models.get(call.model)
        if host is None and self.pool is None:
            yield Failure.of(ModelNotFound(f"The model '{call.model}' does not exist.", param="model"))
            return
        items = host.stream(call) if host is not None else self.pool.stream(call)
        try:
            async for item in items:
                yield item
        finally:
            await items.aclose()

    async def telemetry(self) -> list[dict[str, Any]]:
        if self._telemetry is not None:
            return await self._telemetry()
        snaps = [host.snapshot() for host in self.models.values() if hasattr(host, "snapshot")]
        if self.pool is not None:
            snaps += [replica_snapshot(s) for s in self.pool.services().values()]
        recorder = getattr(getattr(self._ops, "manager", None), "recorder", None)
        if recorder is not None:
            snaps.append(recorder.snapshot())
        return snaps

    async def stats(self, snapshots: list[dict[str, Any]]) -> dict[str, Any]:
        running = await self._replicas() if self._replicas is not None else {}
        return stats_of(await self._infos(), running, snapshots)
