"""The one builder: settings -> bound Serve application.

Used by ``serve run serve_config.yaml`` (``import_path: deployments.app:build_app``)
and by ``kronk server start`` (through deployments/launch.py).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from ray import serve
from ray.serve import Application

from deployments.ingress import Ingress
from deployments.llm import LlamaDeployment, deployment_options, prefix_routed
from deployments.pool import PoolDeployment, pool_options
from kronk.settings import ModelConfig, Settings, load_settings


def build_app(args: dict[str, Any] | None = None) -> Application:
    """``args`` are Settings fields; they win over KRONK_* env vars and the config file."""
    settings = load_settings(args or {})
    return build_app_from_settings(settings)


def _one_model(settings: Settings) -> ModelConfig | None:
    """The one served model when its replicas can take HTTP themselves (no routing ingress), else None: not when
    it may scale to zero, nor when its calls are routed by prompt prefix across its replicas (only the routing
    ingress's handle calls carry a parsed request for deployments/router.py to route)."""
    if len(settings.models) != 1 or settings.ingress != "auto":
        return None
    only = settings.resolved_model(settings.models[0])
    if only.min_replicas == 0 or prefix_routed(only):  # min_replicas unset means 1
        return None
    return only


def replica_front_problem(settings: Settings, local: bool = True) -> str | None:
    """Why this app's replicas cannot listen on the HTTP port themselves (None: they can). ``local``: the app
    has a Ray started on this machine for itself."""
    if not local:
        return "needs a Ray started on this machine for this app (no --address)"
    only = _one_model(settings)
    if only is None:
        if len(settings.models) == 1 and settings.ingress == "auto" and prefix_routed(
                settings.resolved_model(settings.models[0])):
            return ("cannot route by prompt prefix (prefix_routing, on by default for a model with max_replicas > "
                    "1: a routing ingress sends each chat to the replica that holds its history, behind Serve's "
                    "proxy); set prefix_routing false to let the replicas take HTTP themselves")
        return ("needs exactly one model, ingress auto and min_replicas >= 1 (a routing ingress or a scaled-to-zero "
                "model needs Serve's proxy)")
    opts = deployment_options(only)
    if "autoscaling_config" in opts:
        return ("needs a fixed replica count (min_replicas == max_replicas): Serve's autoscaler counts only the "
                "requests its proxy routes")
    return None


def _refuse_impossible_replica_front(settings: Settings, local: bool) -> str | None:
    """replica_front_problem; a ValueError when ``http_front`` asks for ``replica`` anyway."""
    why = replica_front_problem(settings, local)
    if settings.http_front == "replica" and why:
        raise ValueError(f"http_front replica {why}")
    return why


def resolve_http_front(settings: Settings, local: bool) -> Literal["proxy", "replica"]:
    """``auto`` -> ``replica`` when ``kronk server start`` runs Ray on this one machine and the app allows it;
    ``replica`` where it cannot work raises ValueError."""
    why = _refuse_impossible_replica_front(settings, local)
    if settings.http_front != "auto":
        return settings.http_front
    return "replica" if why is None else "proxy"


def build_app_from_settings(settings: Settings) -> Application:
    settings_args = settings.to_args()
    _refuse_impossible_replica_front(settings, local=True)  # built for `serve run`, the runner or a test
    only = _one_model(settings)
    if only is not None:
        # one model: its replicas serve HTTP themselves (no routing hop; see deployments/server.py)
        from deployments.server import LlamaServer, server_options

        return LlamaServer.options(**server_options(deployment_options(only))).bind(
            settings.models[0].model_dump(exclude_none=True), settings_args)
    handles = {}
    for m in settings.models:
        resolved = settings.resolved_model(m)
        opts = deployment_options(resolved)
        handles[m.name] = LlamaDeployment.options(**opts).bind(m.model_dump(exclude_none=True), settings_args)
    pool = PoolDeployment.options(**pool_options(settings)).bind(settings_args) if settings.pool else None
    return Ingress.bind(handles, settings_args, pool)


def wait_until_running(app_name: str = "kronk", timeout_s: float = 600.0, poll_s: float = 1.0) -> None:
    """Wait for the application to be RUNNING; fail with a clear message if it cannot be placed."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        status = serve.status().applications.get(app_name)
        if status is not None:
            if status.status == "RUNNING":
                return
            if status.status == "DEPLOY_FAILED":
                raise RuntimeError(f"application {app_name} failed to deploy: {status.message}")
            msgs = [f"{n}: {d.message}" for n, d in status.deployments.items() if d.message]
            last = "; ".join(msgs) or status.message
        time.sleep(poll_s)
    raise TimeoutError(
        f"application {app_name} did not start within {timeout_s:.0f}s: {last or 'still deploying'}. "
        "If a deployment cannot be placed, lower its num_cpus/num_gpus or start Ray with more resources."
    )
