"""The pool deployment: installed models that the config does not pin, served on demand.

Each replica runs a :class:`kronk.serving.pool.ModelPool` (loads within a memory
budget, LRU eviction of idle models, keep-alive). Requests reach the replica that
holds their model through Serve's model multiplexing: the routing ingress sends each
call with ``multiplexed_model_id`` set to its model, and every replica tells Serve's
controller which models it holds or is loading (``record_request_routing_info``, what
``@serve.multiplexed`` does; the pool keeps its own cache instead of the decorator's,
which counts models rather than memory and would evict a model under a running
request). The pool's states and recent events go on the stats board with the
replica's metrics, where the ingress reads them for ``/v1/models`` and the event
stream.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from deployments.board import start_publisher_in_actor
from kronk.api.pool import make_pool
from kronk.serving.call import Call
from kronk.serving.items import Item
from kronk.serving.service import ModelService
from kronk.settings import Settings
from kronk.telemetry import tracing
from kronk.telemetry.metrics import Recorder

log = logging.getLogger("ray.serve")

POOL_DEPLOYMENT = "llm-pool"


class RoutingReport:
    """Tells Serve's controller the models this replica holds or loads, so that calls for them come here."""

    def __init__(self) -> None:
        ctx = serve.get_replica_context()
        self._replica_id = getattr(ctx, "replica_id", None)

    def __call__(self, model_ids: list[str]) -> None:
        from ray.serve._private.common import RequestRoutingInfo
        from ray.serve.context import _get_global_client

        if self._replica_id is None:
            return
        try:
            _get_global_client().record_request_routing_info(
                RequestRoutingInfo(replica_id=self._replica_id, multiplexed_model_ids=sorted(model_ids)))
        except Exception:  # routing falls back to any replica: the model loads where the call lands
            log.warning("could not tell Serve which models this replica holds", exc_info=True)


class PoolTelemetry:
    """Each pool model's metrics as a model replica's (component ``llm``, tagged ``<replica>/<model>``), on the
    stats board while it is loaded."""

    def __init__(self, replica: str):
        self.replica = replica
        self._publishers: dict[int, Any] = {}

    def started(self, svc: ModelService) -> None:
        rec = svc.recorder = Recorder("llm", f"{self.replica}/{svc.model_id}", model=svc.model_id)
        self._publishers[id(svc)] = start_publisher_in_actor(
            rec, sample=lambda: rec.on_engine_stats(svc.engine.stats()))

    def stopped(self, svc: ModelService) -> None:
        pub = self._publishers.pop(id(svc), None)
        if pub is not None:
            pub.close()


class PoolReplica:
    def __init__(self, settings_args: dict[str, Any]):
        self.settings = Settings.from_resolved(settings_args)
        tracing.setup(on=self.settings.otel)
        tag = serve.get_replica_context().replica_tag
        self.recorder = Recorder("pool", tag)
        self._report = RoutingReport()
        self.telemetry = PoolTelemetry(tag)
        self.pool = make_pool(self.settings, replica=tag, on_event=self._on_event, started=self.telemetry.started,
                              stopped=self.telemetry.stopped)
        self._publisher = start_publisher_in_actor(self.recorder, snapshot=self._snapshot)

    def _on_event(self, event: dict[str, Any]) -> None:
        self.recorder.on_pool_event(event, self.pool.used_bytes(), self.pool.budget_bytes)
        self._report([m for m, e in self.pool.entries.items() if e.state in ("loading", "loaded")])

    def _snapshot(self) -> dict[str, Any]:
        return {**self.recorder.snapshot(), "pool": self.pool.snapshot()}

    async def stream(self, call: Call) -> AsyncIterator[Item]:
        async for item in self.pool.stream(call):
            yield item

    async def load(self, model: str, keep_alive_s: float | None = None) -> dict[str, Any]:
        return await self.pool.load(model, keep_alive_s)

    async def unload(self, model: str) -> dict[str, Any]:
        return await self.pool.unload(model)

    async def states(self) -> list[dict[str, Any]]:
        return self.pool.states()

    async def __del__(self) -> None:
        pub = getattr(self, "_publisher", None)
        if pub is not None:
            pub.close()
        pool = getattr(self, "pool", None)
        if pool is not None:
            await pool.close()


PoolDeployment = serve.deployment(name="PoolDeployment", max_ongoing_requests=1000, health_check_period_s=10,
                                  graceful_shutdown_timeout_s=60)(PoolReplica)


def pool_options(settings: Settings) -> dict[str, Any]:
    return {"name": POOL_DEPLOYMENT, "num_replicas": settings.pool_replicas,
            "ray_actor_options": {"num_cpus": settings.pool_num_cpus}}
