"""The foreground server: Ray (local or joined), the Serve application, and a clean shutdown."""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
import time
from typing import Any

from kronk.cli import procs
from kronk.cli.common import err, fail
from kronk.settings import Settings

APP_NAME = "kronk"
log = logging.getLogger("kronk.server")


class _Stop(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM to unwind into the shutdown."""


def validate_models(settings: Settings) -> None:
    """Every --model is a catalog name, a model in the store, an hf.co reference or an existing .gguf (exit 2)."""
    from kronk.catalog import Catalog
    from kronk.store import InvalidRef, ModelStore, parse_ref

    catalog = Catalog.load(settings)
    store = ModelStore(settings, catalog=catalog)
    for m in settings.models:
        src = m.model_source
        try:
            ref = parse_ref(src)
        except InvalidRef as e:
            fail(f"model {m.name}: {e.message}")
        if ref.kind == "local":
            if ref.path is None or not ref.path.is_file():
                fail(f"model file {src} does not exist; give the path of a .gguf file")
        elif ref.kind == "catalog" and src not in catalog and store.get(src) is None:
            close = [e.name for e in catalog.list() if src.split(":")[0] in e.name][:5]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            fail(f"unknown model {src!r}{hint}; see `kronk catalog list` for names, or give "
                 "hf.co/<org>/<repo>:<QUANT> or a .gguf path")


def cpus_needed(settings: Settings) -> int:
    """Logical CPUs for every model replica at its max scale, plus the ingress and model manager."""
    total = 0.0
    for m in settings.models:
        r = settings.resolved_model(m)
        replicas = max(r.max_replicas or 1, r.min_replicas or 0, r.initial_replicas or 0, 1)
        total += (r.num_cpus if r.num_cpus is not None else 1.0) * replicas
    return math.ceil(total + 1)


def _install_signals(state: dict[str, Any]) -> None:
    def handler(signum: int, frame: Any) -> None:
        if state.get("stopping"):
            # a second Ctrl-C: do not wait for a graceful shutdown
            err("kronk: forced exit")
            procs.kill_all(procs.descendants(os.getpid()))
            os._exit(130)
        state["stopping"] = True
        if state.get("raise", True):
            raise _Stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _shutdown(local: bool, started: bool) -> None:
    import ray
    from ray import serve

    kids = procs.descendants(os.getpid())
    if started:
        err("kronk: shutting down")

        def stop_serve() -> None:
            try:
                if local:
                    serve.shutdown()
                else:
                    serve.delete(APP_NAME)
            except Exception as e:  # keep going: Ray is shut down next either way
                err(f"kronk: Serve shutdown failed: {e}")

        t = threading.Thread(target=stop_serve, daemon=True)
        t.start()
        t.join(60)
    try:
        if ray.is_initialized():
            ray.shutdown()
    except Exception as e:
        err(f"kronk: Ray shutdown failed: {e}")
    if local:  # whatever Ray left behind (helper processes) goes too
        procs.terminate([p for p in kids if procs.alive(p)], grace_s=3.0)


def run_server(settings: Settings, url: str, start_timeout: float, detached: bool,
               config_path: str | None) -> int:
    """Start Ray + the Serve app, block until SIGINT/SIGTERM, then stop everything. Returns the exit code."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never phone home
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # plain log files
    # Ray's worker processes inherit these, so replicas read the same home and config file.
    os.environ["KRONK_HOME"] = str(settings.home)
    if config_path:
        os.environ["KRONK_CONFIG"] = str(config_path)
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    procs.write_info(settings.home, {
        "pid": os.getpid(), "url": url, "host": settings.host, "port": settings.port,
        "home": str(settings.home), "models_dir": str(settings.models_path),
        "models": [m.name for m in settings.models], "address": settings.address,
        "detached": detached, "log": str(procs.log_path(settings.home)) if detached else None,
        "started_at": time.time(),
    })
    local = not settings.address
    state: dict[str, Any] = {}
    started = False
    keeper = None
    code = 0
    _install_signals(state)
    try:
        import ray
        from ray import serve

        from deployments.app import (
            build_app_from_settings,
            resolve_http_front,
            start_local_serve,
            start_serve,
            wait_until_running,
        )

        if local:
            from deployments.ray_env import apply_ray_env

            apply_ray_env()  # before ray.init: Ray's processes read it when they start
            cpus = max(os.cpu_count() or 1, cpus_needed(settings))
            err(f"kronk: starting a local Ray cluster ({cpus} logical CPUs)")
            # Ray's helper processes start with SIGINT ignored, so a Ctrl-C in the terminal reaches only
            # this process, which then shuts them down in order.
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                ray.init(address="local", num_cpus=cpus, include_dashboard=False, namespace=APP_NAME,
                         log_to_driver=True, configure_logging=False)
            finally:
                signal.signal(signal.SIGINT, old)
        else:
            err(f"kronk: joining the Ray cluster at {settings.address}")
            ray.init(address=settings.address, namespace=APP_NAME, log_to_driver=True, configure_logging=False)
        # ray.init replaced the SIGTERM handler (with sys.exit, and a C-level stack dump): take it back
        _install_signals(state)
        if state.get("stopping"):
            raise _Stop()
        started = True
        front = resolve_http_front(settings, local)
        # "replica": the model's replicas listen on host:port themselves (deployments/direct_http.py)
        settings = settings.model_copy(update={"http_front": front})
        if local:  # this process keeps the port for the replicas; Ray's services yield the CPU to the models
            keeper = start_local_serve(front, settings.host, settings.port, settings.background_nice)
        else:
            start_serve(front, settings.host, settings.port)
        names = ", ".join(m.name for m in settings.models)
        taker = "the model's replicas" if front == "replica" else "Serve's proxy"
        err(f"kronk: deploying {names} (models in {settings.models_path}; HTTP taken by {taker})")
        serve.run(build_app_from_settings(settings), name=APP_NAME, route_prefix="/", blocking=False)
        wait_until_running(APP_NAME, start_timeout)
        if not procs.wait_healthy(url, 60):
            raise TimeoutError(f"the application is running but {url}/health does not answer")
        err(f"kronk: serving {names} at {url} (Ctrl-C or `kronk server stop` to stop)")
        print(url, flush=True)
        while True:
            time.sleep(3600)
    except _Stop:
        code = 0
    except Exception as e:
        err(f"kronk: the server failed to start: {e}")
        code = 1
    finally:
        state["stopping"] = True
        state["raise"] = False
        try:
            _shutdown(local, started)
        finally:
            if keeper is not None:
                keeper.close()
            procs.clear_info(settings.home, os.getpid())
        err("kronk: stopped")
    return code
