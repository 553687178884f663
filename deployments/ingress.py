"""The routing ingress: kronk's FastAPI app over deployment handles, routing each call by ``model`` (and, among a
model's replicas, by prompt prefix: deployments/router.py runs in this process, in each handle's router).

:class:`ServeBackend` is the Serve-handle form of ``kronk.serving.backend.Backend``
(the in-process form is ``kronk.serving.local.LocalBackend``). What both Serve
shapes share — the model manager actor's client, the running replica counts from
Serve's controller, every replica's numbers from the stats board — is here too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from deployments.board import get_board, start_publisher_in_actor
from deployments.llm import BACKPRESSURE_RETRY_AFTER_S, deployment_name
from kronk.api.app import create_app
from kronk.api.errors import unwrap
from kronk.api.limits import Limits
from kronk.errors import EngineOverloaded
from kronk.security.access import Access
from kronk.serving.backend import model_card, stats_of
from kronk.serving.call import Call
from kronk.serving.items import Failure, Item
from kronk.serving.pool import not_for_pool
from kronk.settings import Settings
from kronk.telemetry import tracing
from kronk.telemetry.board import Publisher
from kronk.telemetry.metrics import Recorder

APP_NAME = "kronk"
# Retry-After of a request whose model replica died under it (Serve starts a replacement).
REPLICA_RETRY_AFTER_S = 5.0
# How often the model event stream looks for the pool replicas' new events on the stats board.
EVENT_POLL_S = 0.5


class ActorModelOps:
    """The model manager actor's calls, awaitable (its errors raised as the KronkErrors they are)."""

    def __init__(self, settings_args: dict[str, Any]):
        self.settings_args = settings_args
        self._actor: Any = None

    async def call(self, method: str, *args: Any) -> Any:
        if self._actor is None:
            from deployments.model_manager import get_or_create_model_manager

            self._actor = get_or_create_model_manager(self.settings_args)
        try:
            return await getattr(self._actor, method).remote(*args)
        except Exception as e:
            raise unwrap(e) from None


class ReplicaCounts:
    """Running replicas per model, from Serve's controller (cached for a couple of seconds)."""

    def __init__(self, models: list[str]):
        self.models = models
        self._counts: dict[str, int] = {}
        self._at = 0.0

    async def __call__(self) -> dict[str, int]:
        now = time.monotonic()
        if now - self._at > 2.0:
            try:
                st = await asyncio.to_thread(serve.status)
                deps = st.applications[APP_NAME].deployments if APP_NAME in st.applications else {}
                by_name = {name: sum(n for s, n in d.replica_states.items() if getattr(s, "value", s) == "RUNNING")
                           for name, d in deps.items()}
                self._counts = {m: by_name.get(deployment_name(m), 0) for m in self.models}
                self._at = now
            except Exception:  # the controller is busy: assume every model is up
                self._counts = {m: 1 for m in self.models}
        return self._counts


def pool_snapshots(snapshots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pool part of the pool replicas' board snapshots (deployments/pool.py)."""
    return [s["pool"] for s in snapshots if isinstance(s.get("pool"), dict)]


async def board_snapshots() -> list[dict[str, Any]]:
    """Every replica's snapshot on the stats board (none when the board is unreachable)."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(get_board().all), timeout=5)
    except Exception:
        return []


def http_recorder(snapshot: Callable[[], dict[str, Any]] | None = None) -> tuple[Recorder, Publisher | None]:
    """The HTTP side's metrics of this replica (component ``ingress``), published to the stats board (as
    ``snapshot()`` when given: the recorder's snapshot and more)."""
    rec = Recorder("ingress", serve.get_replica_context().replica_tag)
    return rec, start_publisher_in_actor(rec, snapshot=snapshot)


class ServeBackend:
    """The Backend the routes use, over Serve deployment handles."""

    def __init__(self, handles: dict[str, DeploymentHandle], settings: Settings,
                 pool: DeploymentHandle | None = None):
        self.handles = handles
        self.pool = pool  # the pool deployment: installed models no deployment pins, routed by model id
        self.on_demand = pool is not None
        self._pool_streams = pool.options(stream=True, _by_reference=False) if pool is not None else None
        self._ops = ActorModelOps(settings.to_args())
        self.streams = {m: h.options(stream=True, _by_reference=False) for m, h in handles.items()}
        self.created = int(time.time())
        self._info: dict[str, dict[str, Any]] = {}
        self.running_replicas = ReplicaCounts(list(handles))
        # Only a model that may scale to zero can have no replica; the others are always asked.
        self._scales_to_zero = {m: settings.resolved_model(m).min_replicas == 0 for m in handles}

    async def model_ids(self) -> list[str]:
        return list(self.handles)

    async def _model_info(self, model: str) -> dict[str, Any]:
        # Asking a model scaled to zero would start a replica: describe it from what is known instead.
        if self._scales_to_zero.get(model) and (await self.running_replicas()).get(model, 1) == 0:
            return {**self._info.get(model, {}), "model": model, "replicas": 0, "stats": None}
        try:
            info = await asyncio.wait_for(self.handles[model].info.remote(), timeout=5)
            self._info[model] = info
        except Exception as e:  # a model still loading or down answers with its status
            info = self._info.get(model) or {"error": f"unavailable: {type(unwrap(e)).__name__}"}
        return info

    async def model_cards(self) -> list[dict[str, Any]]:
        return [model_card(m, self.created, self._info.get(m) or await self._model_info(m)) for m in self.handles]

    def _pool_handle(self, model: str, stream: bool = False) -> DeploymentHandle:
        if model in self.handles or self.pool is None or self._pool_streams is None:
            raise not_for_pool(model, pinned=model in self.handles)
        return (self._pool_streams if stream else self.pool).options(multiplexed_model_id=model)

    async def stream(self, call: Call) -> AsyncIterator[Item]:
        if call.model in self.streams:
            gen = self.streams[call.model].stream.remote(call)
        else:
            try:
                gen = self._pool_handle(call.model, stream=True).stream.remote(call)
            except Exception as e:
                yield Failure.of(e)
                return
        finished = False
        try:
            async for item in gen:
                yield item
            finished = True
        except Exception as e:  # Serve's queue turned it away, the replica died, or Serve could not reach one
            finished = True
            yield Failure.of(self._told(call.model, unwrap(e)))
        finally:
            if not finished:
                gen.cancel()  # the client went away: stop the generation in the replica

    @staticmethod
    def _told(model: str, err: BaseException) -> BaseException:
        """What the client hears of a Ray or Serve error on the hop: a 503 with Retry-After where retrying helps
        (Serve's queue for the model is full; the model's replica died or cannot be reached, and Serve is
        replacing it), the error itself otherwise (a KronkError as it is, anything else a 500)."""
        if isinstance(err, BackPressureError):
            after = err.retry_after_s or BACKPRESSURE_RETRY_AFTER_S
            return EngineOverloaded(f"{model} is at capacity: every replica is busy and Serve's queue for it is "
                                    f"full ({err.message}). Retry after about {after:.0f} s.", retry_after_s=after)
        if isinstance(err, RayActorError | DeploymentUnavailableError):
            return EngineOverloaded(f"{model}'s replica stopped or cannot be reached ({type(err).__name__}); Serve "
                                    f"replaces it. Retry after about {REPLICA_RETRY_AFTER_S:.0f} s.",
                                    code="replica_unavailable", retry_after_s=REPLICA_RETRY_AFTER_S)
        return err

    def model_ops(self) -> ActorModelOps:
        return self._ops

    async def pool_states(self) -> list[dict[str, Any]]:
        if self.pool is None:
            return []
        return [st for p in pool_snapshots(await board_snapshots()) for st in p["states"]]

    async def load_model(self, model: str, keep_alive_s: float | None = None) -> dict[str, Any]:
        return await self._pool_call("load", model, keep_alive_s)

    async def unload_model(self, model: str) -> dict[str, Any]:
        return await self._pool_call("unload", model)

    async def _pool_call(self, method: str, model: str, *args: Any) -> dict[str, Any]:
        try:
            return await getattr(self._pool_handle(model), method).remote(model, *args)
        except Exception as e:
            raise self._told(model, unwrap(e)) from None

    async def model_events(self) -> AsyncIterator[dict[str, Any]]:
        """The pool replicas' state changes, read from the stats board as they publish them."""
        if self.pool is None:
            return
        seen = {(e["replica"], e["seq"]) for p in pool_snapshots(await board_snapshots()) for e in p["events"]}
        while True:
            await asyncio.sleep(EVENT_POLL_S)
            fresh = [e for p in pool_snapshots(await board_snapshots()) for e in p["events"]
                     if (e["replica"], e["seq"]) not in seen]
            for e in sorted(fresh, key=lambda e: (e["at"], e["seq"])):
                seen.add((e["replica"], e["seq"]))
                yield e

    async def telemetry(self) -> list[dict[str, Any]]:
        return await board_snapshots()

    async def stats(self, snapshots: list[dict[str, Any]]) -> dict[str, Any]:
        infos = {m: dict(await self._model_info(m)) for m in self.handles}
        return stats_of(infos, await self.running_replicas(), snapshots)


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=1000)
@serve.ingress()
class Ingress:
    def __init__(self, handles: dict[str, DeploymentHandle], settings_args: dict[str, Any],
                 pool: DeploymentHandle | None = None):
        self.settings = Settings.from_resolved(settings_args)
        self.backend = ServeBackend(handles, self.settings, pool)
        tracing.setup(on=self.settings.otel)
        self.recorder, self._publisher = http_recorder()

    def __serve_build_asgi_app__(self) -> Any:
        """This replica's app (Serve calls it after __init__): its own backend, keys and recorder."""
        return create_app(self.backend, access=Access.from_settings(self.settings), recorder=self.recorder,
                          limits=Limits.from_settings(self.settings))

    def __del__(self) -> None:
        pub = getattr(self, "_publisher", None)
        if pub is not None:
            pub.close()
