"""A model replica that is also the HTTP ingress: the application shape for one served model.

With one model there is nothing to route, so the separate routing ingress
(``deployments/ingress.py``) is only an extra process and an extra hop for every
streamed item. ``LlamaServer`` is ``LlamaDeployment`` (same engine, same
``@serve.batch`` admission, same options and autoscaling) with kronk's FastAPI
app on it, over a ``LocalBackend`` whose one model is this replica itself: Serve's
HTTP proxy streams straight from the replica that generates the tokens, and with
autoscaling the proxy spreads requests over the model's replicas. Several models,
a model that may scale to zero, or one routed by prompt prefix across its replicas
(``prefix_routing``, deployments/router.py) keep the routing ingress (see
``deployments.app.build_app_from_settings``).
"""

from __future__ import annotations

from typing import Any

from ray import serve

from deployments.direct_http import DirectHTTPServer
from deployments.ingress import ActorModelOps, ReplicaCounts, board_snapshots, http_recorder
from deployments.llm import DEPLOYMENT_DEFAULTS, LlamaReplica
from deployments.pool import PoolTelemetry
from kronk.api.app import create_app
from kronk.api.limits import Limits
from kronk.api.pool import make_pool
from kronk.security.access import Access
from kronk.serving.local import LocalBackend

# The replica also answers /health, /metrics, /v1/models, pulls ...: room for those beyond the model's own
# admission limit, so a replica busy with max_ongoing_requests generations still answers a scrape at once.
HTTP_HEADROOM = 32
# Requests a replica's own listener lets finish when it stops (within Serve's graceful_shutdown_timeout_s).
DRAIN_TIMEOUT_S = DEPLOYMENT_DEFAULTS["graceful_shutdown_timeout_s"] - 10


class LlamaServerReplica(LlamaReplica):
    """A model replica with kronk's HTTP routes (deployed as LlamaServer).

    Serve's proxy reaches the routes through ``serve.ingress``; with ``http_front: replica`` the replica also
    listens on the user's host:port itself (deployments/direct_http.py) and Serve runs no proxy.
    """

    def __init__(self, model: dict[str, Any], settings_args: dict[str, Any]):
        super().__init__(model, settings_args)
        self.recorder, self._http_publisher = http_recorder(snapshot=self._http_snapshot)
        # the other installed models, on demand, in this process beside the pinned one
        self.pool = None
        if self.settings.pool:
            telemetry = PoolTelemetry(self.recorder.replica)
            self.pool = make_pool(self.settings, replica=self.recorder.replica, on_event=self._on_pool_event,
                                  started=telemetry.started, stopped=telemetry.stopped)
        self.backend = LocalBackend({self.model.name: self}, ops=lambda: ActorModelOps(settings_args),
                                    telemetry=board_snapshots, replicas=ReplicaCounts([self.model.name]),
                                    pool=self.pool)
        self._direct: DirectHTTPServer | None = None
        if self.settings.http_front == "replica":
            self.stream_interval_s = 0.0  # no proxy, so no handle hop: every item goes to its client at once

    async def __serve_build_asgi_app__(self) -> Any:
        """This replica's app (Serve calls it after __init__, once the engine has loaded or failed to: then
        every request gets the reason, as through the proxy)."""
        app = create_app(self.backend, access=Access.from_settings(self.settings), recorder=self.recorder,
                         limits=Limits.from_settings(self.settings))
        if self.settings.http_front == "replica":
            self._direct = DirectHTTPServer(app, self.settings.host, self.settings.port)
            self._direct.start()
        return app

    def _on_pool_event(self, event: dict[str, Any]) -> None:
        assert self.pool is not None
        self.recorder.on_pool_event(event, self.pool.used_bytes(), self.pool.budget_bytes)

    def _http_snapshot(self) -> dict[str, Any]:
        snap = self.recorder.snapshot()
        if getattr(self, "pool", None) is not None:  # the pool models' own numbers are in their services' recorders
            snap["pool"] = self.pool.snapshot()
        return snap

    def check_health(self) -> None:
        super().check_health()
        if self._direct is not None and not self._direct.alive():
            raise RuntimeError(f"the HTTP listener on port {self._direct.port} stopped")

    async def __del__(self) -> None:
        """Serve's graceful shutdown: stop listening, let running HTTP requests finish, then free the engine."""
        direct, self._direct = getattr(self, "_direct", None), None
        if direct is not None:
            await direct.stop(DRAIN_TIMEOUT_S)
        pub = getattr(self, "_http_publisher", None)
        if pub is not None:
            pub.close()
        pool = getattr(self, "pool", None)
        if pool is not None:
            await pool.close()
        super().__del__()


LlamaServer = serve.deployment(name="LlamaServer", **DEPLOYMENT_DEFAULTS)(serve.ingress()(LlamaServerReplica))


def server_options(model_options: dict[str, Any]) -> dict[str, Any]:
    """A model's Serve options (deployment_options) for its LlamaServer: the same, plus the HTTP headroom."""
    return {**model_options, "max_ongoing_requests": model_options["max_ongoing_requests"] + HTTP_HEADROOM}
