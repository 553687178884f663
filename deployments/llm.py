"""Per-model deployment: one llama.cpp engine per replica, ``@serve.batch`` admission.

Requests that arrive together enter the engine together through the batched
method; batches run concurrently (``max_concurrent_batches``), so a latecomer
joins the engine's running decode loop at once instead of waiting for a batch
to end. Each request's items (SSE text or one JSON dict) are coalesced and cross
the handle hop at most every ``STREAM_INTERVAL_S``, except a request's first item
and its end, which go at once (time to first token, and the end of a request
whose batch-mates still run). A replica that takes HTTP itself has no hop to
save and passes every item on at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from kronk.errors import EngineOverloaded, KronkError, ModelNotFound
from kronk.settings import ModelConfig, Settings, load_settings
from kronk.telemetry import tracing
from kronk.telemetry.board import start_publisher_in_actor
from kronk.telemetry.metrics import Recorder

log = logging.getLogger("ray.serve")

STREAM_INTERVAL_S = float(os.environ.get("KRONK_STREAM_INTERVAL_MS", "100")) / 1000
MAX_CONCURRENT_BATCHES = 16


def deployment_name(model: str) -> str:
    return "llm-" + re.sub(r"[^A-Za-z0-9_-]+", "-", model).strip("-")


@dataclass
class _Req:
    kind: str
    body: dict[str, Any]
    ctx: dict[str, Any] | None = None  # request_id, traceparent (the ingress's HTTP span)
    cancelled: bool = False
    done: bool = False
    task: asyncio.Task | None = None
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    sent: bool = False  # an item went to the caller


class _Error:
    """An exception delivered as a value through @serve.batch (which shares exceptions batch-wide)."""

    def __init__(self, exc: BaseException):
        self.exc = exc


def _merge(items: list[Any]) -> Any:
    """Coalesce consecutive SSE strings of one request into one item."""
    if len(items) == 1:
        return items[0]
    if all(isinstance(i, str) for i in items):
        return "".join(items)
    return items[-1]


def load_service(settings: Settings, m: ModelConfig):
    """Find (or pull, through the model manager) the model's GGUF and start its engine."""
    from kronk.api.service import ModelService
    from kronk.engine import EngineConfig
    from kronk.engine.engine import LlamaEngine
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
    template = getattr(manifest, "chat_template", None) if manifest else None
    cfg = EngineConfig.from_model(m, str(path), chat_template=template)
    engine = LlamaEngine(cfg)
    return ModelService(engine, m.name)


def deployment_options(m: ModelConfig) -> dict[str, Any]:
    """Serve options for one (resolved) model: name, resources, autoscaling."""
    actor: dict[str, Any] = {"num_cpus": m.num_cpus if m.num_cpus is not None else 1}
    if m.num_gpus:
        actor["num_gpus"] = m.num_gpus
    if m.resources:
        actor["resources"] = dict(m.resources)
    min_r = m.min_replicas if m.min_replicas is not None else 1
    max_r = max(m.max_replicas or 1, min_r, 1)
    initial = m.initial_replicas if m.initial_replicas is not None else max(min_r, 1 if max_r >= 1 else 0)
    opts: dict[str, Any] = {
        "name": deployment_name(m.name),
        "ray_actor_options": actor,
        "max_ongoing_requests": m.max_ongoing_requests or max(4 * (m.parallel or 4), 16),
    }
    if max_r > min_r or min_r == 0:
        opts["autoscaling_config"] = {
            "min_replicas": min_r, "initial_replicas": initial, "max_replicas": max_r,
            "target_ongoing_requests": m.target_ongoing_requests or float(m.parallel or 4),
            "upscale_delay_s": 3.0 if m.upscale_delay_s is None else m.upscale_delay_s,
            "downscale_delay_s": 60.0 if m.downscale_delay_s is None else m.downscale_delay_s,
        }
        if m.look_back_period_s is not None:
            # handles report load every metrics_interval_s (10s): at least twice per window
            opts["autoscaling_config"].update(look_back_period_s=m.look_back_period_s,
                                              metrics_interval_s=min(10.0, m.look_back_period_s / 2))
    else:
        opts["num_replicas"] = min_r
    return opts


async def _drain(batched: AsyncIterator[Any], timeout_s: float = 5.0) -> None:
    """Read a caller's @serve.batch stream to its end (arriving within one stream interval once the request is
    done or cancelled): a caller that stops after its last item would otherwise leave the end-of-stream future
    unread, which asyncio reports as "Future exception was never retrieved"."""

    async def rest() -> None:
        async for _ in batched:
            pass

    try:
        await asyncio.wait_for(rest(), timeout_s)
    except Exception:  # a failed or slow end: nothing left to deliver to this caller
        pass


async def merge_streams(reqs: list[_Req], run: Callable[[_Req], AsyncIterator[Any]],
                        interval_s: float) -> AsyncIterator[list[Any]]:
    """Run every request of a batch at once (``run(req)``: its items) and yield one list per delivery, an entry
    per request: its items since the last delivery (merged), None for none, StopIteration once it ended.

    Items are held back to cross together at most every ``interval_s``, except a request's first item and its
    end: those go at once."""
    ready: asyncio.Queue[int] = asyncio.Queue()
    tasks = [asyncio.create_task(_pump(run(r), r, ready)) for r in reqs]
    for r, t in zip(reqs, tasks, strict=True):
        r.task = t
    last_yield = 0.0
    try:
        while not all(r.done for r in reqs):
            await ready.get()
            # a first item, or what is left of a request that ended (its end among it), goes at once
            urgent = any((r.done or not r.sent) and not r.cancelled and not r.queue.empty() for r in reqs)
            wait = interval_s - (time.perf_counter() - last_yield)
            if wait > 0 and not urgent:
                await asyncio.sleep(wait)
            while not ready.empty():
                ready.get_nowait()
            out: list[Any] = []
            for r in reqs:
                if r.cancelled:  # the caller went away: end its stream now, nobody reads the rest
                    out.append(StopIteration)
                    continue
                items = []
                while not r.queue.empty():
                    items.append(r.queue.get_nowait())
                end = bool(items) and items[-1] is StopIteration
                if end:
                    items.pop()
                if items:
                    out.append(_merge(items) if not any(isinstance(i, _Error) for i in items)
                               else next(i for i in items if isinstance(i, _Error)))
                    r.sent = True
                    if end:  # one entry per delivery: the end goes in the next one, at once
                        r.queue.put_nowait(StopIteration)
                        ready.put_nowait(1)
                else:
                    out.append(StopIteration if end else None)
            last_yield = time.perf_counter()
            yield out
        yield [StopIteration] * len(reqs)
    finally:
        for t in tasks:
            t.cancel()


async def _pump(gen: AsyncIterator[Any], r: _Req, ready: asyncio.Queue) -> None:
    try:
        async for item in gen:
            if r.cancelled:
                break
            r.queue.put_nowait(item)
            ready.put_nowait(1)
            # a caller that went away (client disconnect) stops its generation
            if r.cancelled:
                break
    except Exception as e:  # delivered to this caller only
        r.queue.put_nowait(_Error(e))
        ready.put_nowait(1)
    finally:
        await gen.aclose()
        r.done = True
        r.queue.put_nowait(StopIteration)
        ready.put_nowait(1)


# Serve options every model deployment starts from (deployment_options adds the model's own).
DEPLOYMENT_DEFAULTS: dict[str, Any] = {
    "max_ongoing_requests": 64, "health_check_period_s": 10, "health_check_timeout_s": 30,
    "graceful_shutdown_wait_loop_s": 2, "graceful_shutdown_timeout_s": 60,
}


class LlamaReplica:
    """One model replica: the engine and its batched request entry (deployed as LlamaDeployment)."""

    def __init__(self, model: dict[str, Any], settings_args: dict[str, Any]):
        self.settings = load_settings(settings_args)
        self.model = self.settings.resolved_model(ModelConfig(**model))
        self.error: str | None = None
        self.service = None
        self._publisher = None
        self.stream_interval_s = STREAM_INTERVAL_S  # coalescing for the handle hop (see the module doc)
        tracing.setup()
        t0 = time.perf_counter()
        try:
            self.service = load_service(self.settings, self.model)
        except KronkError as e:
            # The model's own deployment reports the problem on every request; the app keeps running.
            self.error = f"model {self.model.name} could not be loaded: {e.message}"
            log.error(self.error)
        else:
            log.info("model %s loaded in %.1fs", self.model.name, time.perf_counter() - t0)
            self._batched.set_max_batch_size(self.model.parallel or 4)
            self._start_telemetry()

    def _start_telemetry(self) -> None:
        """Metrics tagged with this replica; its snapshot (and engine gauges) go to the stats board."""
        svc = self.service
        assert svc is not None
        rec = svc.recorder = Recorder("llm", serve.get_replica_context().replica_tag, model=self.model.name)
        self._publisher = start_publisher_in_actor(rec, sample=lambda: rec.on_engine_stats(svc.engine.stats()))

    # ------------------------------------------------------------------ requests
    async def stream(self, kind: str, body: dict[str, Any], ctx: dict[str, Any] | None = None) -> AsyncIterator[Any]:
        """Items of one request (see kronk.api.service.ModelService.run), coalesced."""
        if self.service is None:
            raise EngineOverloaded(self.error or "model is not loaded", code="model_unavailable")
        req = _Req(kind, body, ctx)
        batched = self._batched(req)
        ended = False
        try:
            async for item in batched:
                if item is None:
                    continue
                if isinstance(item, _Error):
                    raise item.exc
                yield item
            ended = True
        finally:
            req.cancelled = True
            if req.task is not None and not req.done:
                req.task.cancel()  # frees the engine slot now, even while the request waits for one
            if not ended:  # the caller stopped early: read the batch stream's end (see _drain)
                await _drain(batched)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.005, max_concurrent_batches=MAX_CONCURRENT_BATCHES)
    async def _batched(self, reqs: list[_Req]) -> AsyncIterator[list[Any]]:
        """Starts every request of the batch in the engine at once and merges their item streams."""
        service = self.service
        async for out in merge_streams(reqs, lambda r: service.run(r.kind, r.body, r.ctx), self.stream_interval_s):
            yield out

    # ------------------------------------------------------------------ info
    async def info(self) -> dict[str, Any]:
        from dataclasses import asdict

        import ray

        d: dict[str, Any] = {"model": self.model.name, "error": self.error,
                             "replica": serve.get_replica_context().replica_tag,
                             "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
        if self.service is not None:
            d["model_path"] = self.service.engine.cfg.model_path
            d["stats"] = asdict(self.service.engine.stats())
            d["context_length"] = self.service.engine.stats().n_ctx_slot
        return d

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
