"""Per-model deployment: one llama.cpp engine per replica, ``@serve.batch`` admission.

A thin Serve wrapper over kronk.serving: calls that arrive together enter the
engine together through the batched method, and ``kronk.serving.streams``
merges their item streams (the one place items are coalesced). Batches run
concurrently (``max_concurrent_batches``), so a latecomer joins the engine's
running decode loop at once instead of waiting for a batch to end. Items cross
the handle hop at most every ``stream_interval_ms``, except a call's first item
and its end; a replica that takes HTTP itself has no hop to save and passes
every item on at once.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.serve.config import BackpressureConfig, RequestRouterConfig

from deployments.board import start_publisher_in_actor
from kronk.errors import EngineOverloaded, KronkError, ModelNotFound
from kronk.serving.call import Call
from kronk.serving.items import Failure, Item
from kronk.serving.replica import replica_info
from kronk.serving.service import ModelService
from kronk.serving.streams import Pending, admitted, merge_streams
from kronk.settings import ModelConfig, Settings
from kronk.telemetry import tracing
from kronk.telemetry.metrics import Recorder

log = logging.getLogger("ray.serve")

# Batches running at once in a replica. Every call should reach the engine at once, whose bounded queue
# (max_queued, queue_timeout_s) is the admission control: a cap here would hold the calls beyond it in Serve's
# batch queue, unbounded and untimed (the replica's own HTTP front has no Serve limit in front of it).
MAX_CONCURRENT_BATCHES = 1024
# Retry-After of a request that Serve's own queue turns away (max_queued_requests).
BACKPRESSURE_RETRY_AFTER_S = 2.0


def deployment_name(model: str) -> str:
    return "llm-" + re.sub(r"[^A-Za-z0-9_-]+", "-", model).strip("-")


def load_service(settings: Settings, m: ModelConfig) -> ModelService:
    """Find (or pull, through the model manager) the model's GGUF and start its engine. ``m``: the model's config
    as the user wrote it (unresolved), so that the catalog's values fill only what the user left unset."""
    from kronk.api.pool import start_service
    from kronk.store import ModelStore

    store = ModelStore(settings)
    manifest = None
    try:
        path = store.resolve(m)
        manifest = store.resolve_manifest(m)
    except ModelNotFound:
        import ray

        from deployments.model_manager import get_or_create_model_manager

        log.info("model %s is not in %s: pulling it through the model manager", m.name, settings.models_path)
        mm = get_or_create_model_manager(settings.to_args())
        ref = mm.resolve.remote(m.model_dump())
        while not ray.wait([ref], timeout=5.0)[0]:  # the pull's progress in this replica's log
            for job in ray.get(mm.jobs.remote()):
                if job["status"] == "running" and job.get("bytes_total"):
                    log.info("model %s: pulling %s, %.0f%% (%.1f of %.1f MB, %.1f MB/s)", m.name, job["ref"],
                             100 * job["bytes_done"] / job["bytes_total"], job["bytes_done"] / 1e6,
                             job["bytes_total"] / 1e6, (job.get("rate_bps") or 0) / 1e6)
        path = ray.get(ref)
        manifest = store.resolve_manifest(m)
    return start_service(settings, m, path, manifest)


def prefix_routed(m: ModelConfig) -> bool:
    """Whether the model's callers route by prompt prefix (deployments/router.py): ``prefix_routing`` on a model
    that can have more than one replica (the model resolved)."""
    return bool(m.prefix_routing) and m.max_replicas > 1


def deployment_options(m: ModelConfig) -> dict[str, Any]:
    """Serve options for one model, resolved (Settings.resolved_model: every value is set): name, resources,
    admission, autoscaling, and the request router (prefix affinity: :func:`prefix_routed`).

    Admission: a replica takes ``max_ongoing_requests`` at once (its engine runs ``parallel`` of them and lets
    ``max_queued`` wait, shedding the rest with a 503); beyond that, requests wait in Serve's queue at each caller
    (the routing ingress, Serve's proxy), at most ``max_queued`` of them (Serve has no 0: at least 1), and more get
    Serve's BackPressureError: a 503 with Retry-After from the proxy, and from the routing ingress (ServeBackend)."""
    actor: dict[str, Any] = {"num_cpus": m.num_cpus}
    if m.num_gpus:
        actor["num_gpus"] = m.num_gpus
    if m.resources:
        actor["resources"] = dict(m.resources)
    opts: dict[str, Any] = {"name": deployment_name(m.name), "ray_actor_options": actor,
                            "max_ongoing_requests": m.max_ongoing_requests,
                            "max_queued_requests": max(1, m.max_queued),
                            "backpressure_config": BackpressureConfig(retry_after_s=BACKPRESSURE_RETRY_AFTER_S)}
    if m.max_replicas > m.min_replicas or m.min_replicas == 0:
        opts["autoscaling_config"] = {
            "min_replicas": m.min_replicas, "initial_replicas": m.initial_replicas, "max_replicas": m.max_replicas,
            "target_ongoing_requests": m.target_ongoing_requests, "upscale_delay_s": m.upscale_delay_s,
            "downscale_delay_s": m.downscale_delay_s, "look_back_period_s": m.look_back_period_s,
            # handles report load every metrics_interval_s (Ray's 10s): at least twice per window
            "metrics_interval_s": min(10.0, m.look_back_period_s / 2),
        }
    else:
        opts["num_replicas"] = m.min_replicas
    if prefix_routed(m):
        # a replica counts as busy with every slot taken: then the least loaded one takes a call instead
        opts["request_router_config"] = RequestRouterConfig(
            request_router_class="deployments.router:PrefixAffinityRouter",
            request_router_kwargs={"busy_at": m.parallel})
    return opts


# Serve options every model deployment starts from (deployment_options adds the model's own).
DEPLOYMENT_DEFAULTS: dict[str, Any] = {
    "max_ongoing_requests": 64, "health_check_period_s": 10, "health_check_timeout_s": 30,
    "graceful_shutdown_wait_loop_s": 2, "graceful_shutdown_timeout_s": 60,
}


class LlamaReplica:
    """One model replica: the engine and its batched request entry (deployed as LlamaDeployment)."""

    def __init__(self, model: dict[str, Any], settings_args: dict[str, Any]):
        self.settings = Settings.from_resolved(settings_args)  # resolved once, by whoever built the app
        own = ModelConfig(**model)  # as the user wrote it: the catalog fills what it leaves unset
        self.model = self.settings.resolved_model(own)
        self.error: str | None = None
        self.service = None
        self._publisher = None
        self.stream_interval_s = self.settings.stream_interval_ms / 1000  # coalescing for the handle hop
        tracing.setup(on=self.settings.otel)
        t0 = time.perf_counter()
        try:
            self.service = load_service(self.settings, own)
        except KronkError as e:
            # The model's own deployment reports the problem on every request; the app keeps running.
            self.error = f"model {self.model.name} could not be loaded: {e.message}"
            log.error(self.error)
        else:
            log.info("model %s loaded in %.1fs", self.model.name, time.perf_counter() - t0)
            self._batched.set_max_batch_size(self.model.parallel)
            self._start_telemetry()

    def _start_telemetry(self) -> None:
        """Metrics tagged with this replica; its snapshot (and engine gauges) go to the stats board."""
        svc = self.service
        assert svc is not None
        rec = svc.recorder = Recorder("llm", serve.get_replica_context().replica_tag, model=self.model.name)
        self._publisher = start_publisher_in_actor(rec, sample=lambda: rec.on_engine_stats(svc.engine.stats()))

    # ------------------------------------------------------------------ requests
    async def stream(self, call: Call) -> AsyncIterator[Item]:
        """A call's items (kronk.serving.items), coalesced for the hop; a failure is a Failure item."""
        if self.service is None:
            yield Failure.of(EngineOverloaded(self.error or "model is not loaded", code="model_unavailable"))
            return
        async for item in admitted(call, self._batched):
            yield item

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.005, max_concurrent_batches=MAX_CONCURRENT_BATCHES)
    async def _batched(self, reqs: list[Pending]) -> AsyncIterator[list[Any]]:
        """Starts every call of the batch in the engine at once and merges their item streams."""
        async for out in merge_streams(reqs, self.service.run, self.stream_interval_s):
            yield out

    # ------------------------------------------------------------------ info
    async def info(self) -> dict[str, Any]:
        """The replica's info for its internal callers (over the handle): with where it runs (node id, pid) and
        the GGUF's path; clients see only kronk.serving.backend.public_info of it."""
        import ray

        where = {"replica": serve.get_replica_context().replica_tag,
                 "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
        if self.service is None:
            return {"model": self.model.name, "error": self.error, **where}
        return {**replica_info(self.service), **where}

    def check_health(self) -> None:
        if self.service is not None:
            eng = self.service.engine
            thread = getattr(eng, "_thread", None)
            if thread is not None and not thread.is_alive():
                raise RuntimeError("the decode loop died")

    def __del__(self) -> None:
        pub = getattr(self, "_publisher", None)
        if pub is not None:
            pub.close()
        svc = getattr(self, "service", None)
        if svc is not None:
            svc.engine.close()


LlamaDeployment = serve.deployment(name="LlamaDeployment", **DEPLOYMENT_DEFAULTS)(LlamaReplica)
