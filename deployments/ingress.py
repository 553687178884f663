"""FastAPI ingress deployment: routes each request by ``model`` to that model's deployment."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.llm import deployment_name
from kronk.api.app import create_app
from kronk.api.backend import RequestContext, context_dict, model_card, set_process_backend
from kronk.api.errors import unwrap
from kronk.security.auth import set_process_api_keys
from kronk.settings import load_settings
from kronk.telemetry import tracing
from kronk.telemetry.board import get_board, snapshot_key, start_publisher_in_actor
from kronk.telemetry.metrics import Recorder, process_recorder, set_process_recorder
from kronk.telemetry.stats import summarize

app = create_app(None)


class ActorModelOps:
    """The model manager actor's calls, awaitable."""

    def __init__(self, actor: Any):
        self.actor = actor

    async def call(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self.actor, method).remote(*args)
        except Exception as e:
            raise unwrap(e) from None


class ServeBackend:
    """The Backend the routes use, over Serve deployment handles."""

    def __init__(self, handles: dict[str, DeploymentHandle], settings_args: dict[str, Any]):
        self.handles = handles
        self.settings_args = settings_args
        self._ops: ActorModelOps | None = None
        self.streams = {m: h.options(stream=True, _by_reference=False) for m, h in handles.items()}
        self.created = int(time.time())
        self._info: dict[str, dict[str, Any]] = {}
        self._replicas: dict[str, int] = {}
        self._replicas_at = 0.0
        self._board = get_board()
        settings = load_settings(settings_args)
        # Only a model that may scale to zero can have no replica; the others are always asked.
        self._scales_to_zero = {m: settings.resolved_model(m).min_replicas == 0 for m in handles}

    async def model_ids(self) -> list[str]:
        return list(self.handles)

    async def running_replicas(self) -> dict[str, int]:
        """Running replicas per model, from Serve's controller (cached for a couple of seconds)."""
        now = time.monotonic()
        if now - self._replicas_at > 2.0:
            try:
                st = await asyncio.to_thread(serve.status)
                deps = st.applications["kronk"].deployments if "kronk" in st.applications else {}
                by_name = {name: sum(n for s, n in d.replica_states.items() if getattr(s, "value", s) == "RUNNING")
                           for name, d in deps.items()}
                self._replicas = {m: by_name.get(deployment_name(m), 0) for m in self.handles}
                self._replicas_at = now
            except Exception:  # the controller is busy: assume every model is up
                self._replicas = {m: 1 for m in self.handles}
        return self._replicas

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
        cards = []
        for m in self.handles:
            info = self._info.get(m) or await self._model_info(m)
            idle = info.get("replicas") == 0
            status = "error" if info.get("error") else ("scaled_to_zero" if idle else "ready")
            extra: dict[str, Any] = {"status": status}
            if info.get("error"):
                extra["error"] = info["error"]
            if info.get("context_length"):
                extra["context_length"] = info["context_length"]
            cards.append(model_card(m, self.created, **extra))
        return cards

    async def stream(self, model: str, kind: str, body: dict[str, Any], ctx: RequestContext) -> AsyncIterator[Any]:
        gen = self.streams[model].stream.remote(kind, body, context_dict(ctx))
        finished = False
        try:
            async for item in gen:
                yield item
            finished = True
        except Exception as e:
            raise unwrap(e) from None
        finally:
            if not finished:
                gen.cancel()  # the client went away: stop the generation in the replica

    def model_ops(self) -> ActorModelOps:
        if self._ops is None:
            from deployments.model_manager import get_or_create_model_manager

            self._ops = ActorModelOps(get_or_create_model_manager(self.settings_args))
        return self._ops

    async def telemetry(self) -> list[dict[str, Any]]:
        """Every replica's snapshot from the stats board, this ingress's own taken fresh."""
        own = process_recorder().snapshot()
        try:
            snaps = await asyncio.wait_for(asyncio.to_thread(self._board.all), timeout=5)
        except Exception:  # the board is unreachable: this replica's numbers are better than none
            snaps = []
        return [s for s in snaps if snapshot_key(s) != snapshot_key(own)] + [own]

    async def stats(self) -> dict[str, Any]:
        """Per model: one replica's live engine stats (``stats``, as before), the running replicas
        and ``aggregate``, every replica's numbers together (see kronk.telemetry.stats.summarize)."""
        agg = summarize(await self.telemetry())
        running = await self.running_replicas()
        out = {}
        for m in self.handles:
            info = dict(await self._model_info(m))
            info["replicas"] = running.get(m, info.get("replicas", 1))
            info["aggregate"] = agg.get(m)
            out[m] = info
        return {"models": out}


def start_http_front(backend: ServeBackend, settings: Any) -> Any:
    """Make this replica answer HTTP: the routes' backend, API keys, tracing, and the HTTP-side metrics
    (component ``ingress``) published to the stats board; returns the publisher to close."""
    set_process_backend(backend)
    set_process_api_keys(k.get_secret_value() for k in settings.api_keys)
    tracing.setup()
    rec = Recorder("ingress", serve.get_replica_context().replica_tag)
    set_process_recorder(rec)
    return start_publisher_in_actor(rec)


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=1000)
@serve.ingress(app)
class Ingress:
    def __init__(self, handles: dict[str, DeploymentHandle], settings_args: dict[str, Any]):
        self.settings = load_settings(settings_args)
        self._publisher = start_http_front(ServeBackend(handles, settings_args), self.settings)

    def __del__(self) -> None:
        pub = getattr(self, "_publisher", None)
        if pub is not None:
            pub.close()
