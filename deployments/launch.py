"""Launch kronk's Serve application from this process, and stop all of it again: the one start-up sequence.

`kronk server start` (kronk/cli/runner.py), the integration tests
(tests/integration/utils.py: ``serve_app``) and the benchmarks (benchmarks/peers.py:
``kronk_serve``) all run :class:`Launch` (or :func:`launched`, its ``with`` form):

1. Ray: a local cluster this process starts, with Ray's env from deployments/ray_env.py
   (less background CPU), SIGINT ignored by Ray's helper processes, every Ray process
   listening on loopback only, and Ray's token authentication on (refused when it is off,
   unless ``settings.insecure``); or join ``settings.address``. Either way the GCS must then
   refuse a client without the token (docs/security.md, "Ray's control plane");
2. the HTTP front (``auto`` -> ``replica`` where one local model allows it,
   deployments/app.py: resolve_http_front);
3. on a local Ray: this process binds the port and keeps it for the replicas
   (deployments/listener.py), then Serve starts (without its proxy for ``replica``) and
   Ray's own services get ``background_nice``;
4. ``serve.run`` the app, wait until it is RUNNING (a clear error when a deployment
   cannot be placed), wait until ``/health`` answers.

:meth:`Launch.stop` undoes all of it: Serve shut down (on a joined cluster only the
app deleted), Ray shut down, the kept port closed, and whatever Ray's local cluster
left behind (helper processes) terminated.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import ray
from ray import serve

from deployments.app import build_app_from_settings, replica_front_problem, resolve_http_front, wait_until_running
from deployments.listener import SUPPORTED as LISTENER_SUPPORTED
from deployments.listener import ListenerKeeper
from deployments.ray_env import (
    INSECURE_HINT,
    apply_ray_env,
    gcs_answers_without_token,
    is_loopback_address,
    loopback_node,
    lower_ray_services,
    protect_token_file,
    token_auth_problem,
)
from kronk.processes import descendants, terminate, wait_healthy
from kronk.settings import Settings, load_settings

APP_NAME = "kronk"  # the Serve application's name, and the Ray namespace of the driver
log = logging.getLogger("kronk.launch")


class InsecureRay(RuntimeError):
    """Ray's control plane would be open to anyone who reaches its ports (the message says how to fix it)."""


def check(settings: Settings) -> str | None:
    """Why the ``http_front: replica`` these settings ask for cannot work (None: it can, or they ask for another
    front): what `kronk server start` checks before it starts anything."""
    if settings.http_front != "replica":
        return None
    return replica_front_problem(settings, local=not settings.address)


def cpus_needed(settings: Settings) -> int:
    """Logical CPUs for every model replica at its max scale, plus the ingress and model manager."""
    total = 0.0
    for m in settings.models:
        r = settings.resolved_model(m)
        replicas = max(r.max_replicas or 1, r.min_replicas or 0, r.initial_replicas or 0, 1)
        total += (r.num_cpus if r.num_cpus is not None else 1.0) * replicas
    return math.ceil(total + 1)


def base_url(host: str, port: int) -> str:
    """Where a client on this machine reaches a server bound to host:port (a wildcard host: loopback)."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host.strip("[]"), host.strip("[]"))
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def start_serve(front: str, host: str, port: int) -> None:
    """Start Serve for an app whose HTTP is taken by ``front``: Serve's proxy on host:port, or no proxy (the
    replicas bind host:port themselves; their settings must carry the same host and port)."""
    if front == "replica":
        serve.start(proxy_location="Disabled")
    else:
        serve.start(http_options={"host": host, "port": port})


def start_local_serve(front: str, host: str, port: int, background_nice: int = 19) -> ListenerKeeper | None:
    """``start_serve`` on a Ray this process started: with ``front`` "replica" this process first binds
    host:port and keeps it for the replicas (deployments/listener.py, Linux); then Ray's own services get
    ``background_nice`` (deployments/ray_env.py). Returns the keeper, to close after Serve and Ray stopped."""
    keeper = ListenerKeeper(host, port) if front == "replica" and LISTENER_SUPPORTED else None
    try:
        start_serve(front, host, port)
        lower_ray_services(background_nice)
    except BaseException:
        if keeper is not None:
            keeper.close()
        raise
    return keeper


@contextmanager
def _signals_around_ray_init() -> Iterator[None]:
    """Ray's helper processes start with SIGINT ignored, so that a Ctrl-C in a terminal reaches only this
    process, which then shuts them down in order; and a SIGTERM handler of the caller's own, which ray.init
    replaces (with sys.exit and a C-level stack dump), is put back. Only the main thread handles signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    old_term = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        if callable(old_term):
            signal.signal(signal.SIGTERM, old_term)


class Launch:
    """Ray + Serve + kronk's app, started by :meth:`start` and stopped by :meth:`stop` (see the module's doc).

    ``settings``: the server's settings (or Settings fields, resolved with ``load_settings``); Ray is local
    unless ``settings.address`` names a cluster to join, HTTP is served on ``settings.host``/``port``.
    ``num_cpus``: the local Ray's logical CPUs (default: the machine's, or what the models need when more,
    :func:`cpus_needed`). ``runtime_env``: Ray's job runtime env. ``log_to_driver``: Ray's worker logs on this
    process's stderr. ``start_timeout_s``: for the app to be RUNNING; ``health_timeout_s``: then for
    ``/health``. ``url``: where ``/health`` is asked (default :func:`base_url`). ``say``: where progress lines
    go (default: the ``kronk.launch`` logger).
    """

    def __init__(self, settings: Settings | dict[str, Any], *, num_cpus: int | None = None,
                 runtime_env: dict[str, Any] | None = None, log_to_driver: bool = False,
                 start_timeout_s: float = 600.0, health_timeout_s: float = 60.0, url: str | None = None,
                 say: Callable[[str], None] | None = None):
        self.settings = settings if isinstance(settings, Settings) else load_settings(settings)
        self.local = not self.settings.address
        self.url = url or base_url(self.settings.host, self.settings.port)
        self.num_cpus = num_cpus
        self.runtime_env = runtime_env
        self.log_to_driver = log_to_driver
        self.start_timeout_s = start_timeout_s
        self.health_timeout_s = health_timeout_s
        self.say = say or log.info
        self.front: str | None = None  # "proxy" or "replica", once resolved
        self._keeper: ListenerKeeper | None = None
        self._ray_started = False
        self._before: set[int] | None = None  # this process's children before it started a local Ray
        self._stopped = False

    def start(self) -> str:
        """Start everything; the base URL once ``/health`` answers. Call :meth:`stop` after, also if this raised."""
        self._start_ray()
        front = self.front = resolve_http_front(self.settings, self.local)
        # "replica": the model's replicas listen on host:port themselves (deployments/direct_http.py)
        s = self.settings = self.settings.model_copy(update={"http_front": front})
        if self.local:  # this process keeps the port for the replicas; Ray's services yield the CPU to the models
            self._keeper = start_local_serve(front, s.host, s.port, s.background_nice)
        else:
            start_serve(front, s.host, s.port)
        names = ", ".join(m.name for m in s.models)
        taker = "the model's replicas" if front == "replica" else "Serve's proxy"
        self.say(f"deploying {names} (models in {s.models_path}; HTTP taken by {taker})")
        serve.run(build_app_from_settings(s), name=APP_NAME, route_prefix="/", blocking=False)
        wait_until_running(APP_NAME, self.start_timeout_s)
        if not wait_healthy(self.url, self.health_timeout_s):
            raise TimeoutError(f"the application is running but {self.url}/health does not answer")
        return self.url

    def _start_ray(self) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never phone home
        if not sys.stderr.isatty():
            os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # plain log files
        if self.local:
            if problem := token_auth_problem():  # before anything starts
                self._insecure(problem)
            apply_ray_env()  # before ray.init: Ray's processes read it when they start
            cpus = self.num_cpus or max(os.cpu_count() or 1, cpus_needed(self.settings))
            self.say(f"starting a local Ray cluster ({cpus} logical CPUs, listening on loopback only)")
            self._before = set(descendants(os.getpid()))
            protect_token_file()
            with loopback_node() as node_ip, _signals_around_ray_init():
                ray.init(address="local", num_cpus=cpus, include_dashboard=False, _node_ip_address=node_ip,
                         namespace=APP_NAME, runtime_env=self.runtime_env, log_to_driver=self.log_to_driver,
                         configure_logging=False)
            protect_token_file()  # ray.init writes one on the first start
        else:
            self.say(f"joining the Ray cluster at {self.settings.address}")
            # a cluster on this machine's loopback: this process's node address stays loopback as well
            node = loopback_node() if is_loopback_address(self.settings.address) else nullcontext()
            with node as node_ip, _signals_around_ray_init():
                ray.init(address=self.settings.address, _node_ip_address=node_ip, namespace=APP_NAME,
                         runtime_env=self.runtime_env, log_to_driver=self.log_to_driver, configure_logging=False)
        self._ray_started = True
        self._check_ray_token()

    def _check_ray_token(self) -> None:
        """The GCS of the Ray this process started or joined must refuse a client without the token: else
        anyone who reaches it runs code as the server (refused unless ``settings.insecure``). Through Ray
        Client (a ``ray://`` address) there is no GCS to ask: the operator must make sure (docs/security.md)."""
        if self.settings.address and self.settings.address.startswith("ray://"):
            self.say(f"{self.settings.address} is reached through Ray Client: make sure that cluster runs with "
                     "RAY_AUTH_MODE=token (docs/security.md)")
            return
        gcs = ray.get_runtime_context().gcs_address
        try:
            if not gcs_answers_without_token(gcs):
                return
        except ConnectionError as e:  # e.g. a cluster with Ray's TLS (RAY_USE_TLS): a plain call cannot tell
            self.say(f"{e}: make sure that cluster runs with RAY_AUTH_MODE=token (docs/security.md)")
            return
        if self.local:
            fix = "Ray's token authentication is off (RAY_AUTH_MODE); unset RAY_AUTH_MODE or set it to token"
        else:
            fix = ("start every node of that cluster with RAY_AUTH_MODE=token and one token (RAY_AUTH_TOKEN, "
                   "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), and give this process the same")
        self._insecure(f"the Ray GCS at {gcs} answers clients without a token, so anyone who reaches it can run "
                       f"code as this server: {fix}")

    def _insecure(self, problem: str) -> None:
        """Refuse (InsecureRay, with how to fix it) unless ``settings.insecure``: then only warn."""
        if not self.settings.insecure:
            raise InsecureRay(f"{problem}, {INSECURE_HINT}")
        self.say(f"WARNING (--insecure): {problem}")

    def stop(self) -> None:
        """Stop what :meth:`start` started, as far as it got (once; later calls do nothing)."""
        if self._stopped:
            return
        self._stopped = True
        left_behind = set(descendants(os.getpid())) - self._before if self._before is not None else set()
        try:
            if self._ray_started:
                self.say("shutting down")
                t = threading.Thread(target=self._stop_serve, daemon=True)
                t.start()
                t.join(60)
            try:
                if ray.is_initialized():
                    ray.shutdown()
            except Exception as e:
                self.say(f"Ray shutdown failed: {e}")
            if left_behind:  # whatever the local Ray left (helper processes) goes too
                terminate(sorted(left_behind), grace_s=3.0)
        finally:
            if self._keeper is not None:
                self._keeper.close()
                self._keeper = None

    def _stop_serve(self) -> None:
        try:
            if self.local:
                serve.shutdown()
            else:
                serve.delete(APP_NAME)
        except Exception as e:  # keep going: Ray is shut down next either way
            self.say(f"Serve shutdown failed: {e}")


@contextmanager
def launched(settings: Settings | dict[str, Any], **options: Any) -> Iterator[str]:
    """``Launch(settings, **options)`` for a ``with`` block: yields the base URL; everything is stopped at the
    block's end, and when starting fails."""
    launch = Launch(settings, **options)
    try:
        yield launch.start()
    finally:
        launch.stop()
