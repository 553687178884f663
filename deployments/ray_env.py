"""Ray settings for the local cluster kronk starts: less background CPU, so llama.cpp keeps the cores.

llama.cpp's decode threads use every core they are given and wait on each other
at every step, so on a small machine each wake-up of another process costs more
than its own CPU time. Measured on 2 cores with one model serving 8 streams
(``benchmarks/README.md``), Ray's defaults keep about 0.1 of a core busy besides
the work itself; these settings take most of that back:

- Serve's controller reconciles every 0.1 s and asks the GCS for the cluster's
  nodes each time (~0.04 cores and the GCS's share); every 0.5 s is still far
  quicker than any autoscaling delay (seconds).
- Ray starts idle worker processes ahead of need; each one wakes ~100 times a
  second. kronk's processes are long-lived actors, started when deployed.
- Ray's log monitor lists the session's log directory every 0.1 s to find new
  log files (~0.01 cores); every 2 s is enough for a new replica's first lines
  to reach the terminal, and nothing is lost (a new file is read from its start).
- Ray starts every worker process at nice 15, so that its own services win the
  CPU over user code. The model replicas are the work here: they run at normal
  priority, as llama-server and Ollama do (at nice 15 every other program on a
  laptop would come first), and ``lower_ray_services`` lowers Ray's services
  instead (nice 19), so their wake-ups wait for the end of a scheduler slice
  instead of preempting a decode thread at once.

They are defaults: a value already in the environment wins. Ray reads them when
its processes start, so they are applied before ``ray.init`` (``kronk server
start``, the benchmarks, the tests); for ``serve run serve_config.yaml`` export
them in the shell (see docs/configuration.md).

Ray's control plane (docs/security.md, "Ray's control plane"): whoever reaches Ray's
ports (the GCS, raylets, workers, the dashboard agent) can run code as the server, unless
Ray's token authentication turns them away. So the local cluster kronk starts listens on
loopback only (:func:`loopback_node`), kronk refuses to start when the token
authentication is off (:func:`token_auth_problem`), and checks after Ray started that its
GCS refuses a client without the token (:func:`gcs_answers_without_token`), on a joined
cluster too; the token's file is kept from other users of the machine (:func:`protect_token_file`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from pathlib import Path

import psutil

from kronk.processes import is_loopback_host

log = logging.getLogger(__name__)

RAY_ENV: dict[str, str] = {
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_enable_worker_prestart": "0",
    "RAY_prestart_worker_first_driver": "0",
    "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",  # always the interval below, not only past 1000 files
    "LOG_NAME_UPDATE_INTERVAL_S": "2",
    "RAY_worker_niceness": "0",  # model replicas at normal priority (Ray's default is 15)
}

# Ray's own service processes on a node, by how their command line starts (the binary or script's file
# name, or the process title Ray gives an actor's worker). Serve's proxies and replicas are not among them:
# they carry requests. Nor are idle workers, which may yet become a model replica, nor the raylet: it
# starts every worker, and a worker keeps its parent's nice value (RAY_worker_niceness can only add to it).
RAY_SERVICES = ("gcs_server", "dashboard.py", "monitor.py", "log_monitor.py",
                "ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::ServeController")


def apply_ray_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set each of RAY_ENV that is not set yet; returns the values in effect."""
    env = os.environ if environ is None else environ
    for k, v in RAY_ENV.items():
        env.setdefault(k, v)
    return {k: env[k] for k in RAY_ENV}


def process_name(cmdline: list[str]) -> str:
    """What a process with this command line (argv) is: the title Ray gives an actor's worker
    (``ray::ServeController``), the script a Python runs (``log_monitor.py``), else the binary's file name."""
    if not cmdline:
        return ""
    if cmdline[0].startswith("ray::"):  # an actor's worker: Ray sets its title as the whole argv[0]
        return cmdline[0].split(" ")[0]
    if Path(cmdline[0]).name.startswith("python"):  # python [-u] script.py ...
        return Path(next((a for a in cmdline[1:] if not a.startswith("-")), "")).name
    return Path(cmdline[0]).name


def is_ray_service(cmdline: list[str]) -> bool:
    """Whether a process with this command line (argv) is one of RAY_SERVICES."""
    return process_name(cmdline) in RAY_SERVICES


def lower_process(pid: int, nice: int) -> bool:
    """Raise the nice value of ``pid`` to ``nice``, on Linux of every one of its threads (nice is per thread
    there; new threads inherit their creator's). Never lowers a nice value. False if the process is gone
    or may not be changed."""
    try:
        tids = [t.id for t in psutil.Process(pid).threads()] if sys.platform.startswith("linux") else [pid]
    except psutil.Error:
        return False
    ok = False
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            ok = True
        except OSError:  # the thread ended, or not ours
            pass
    return ok


def lower_ray_services(nice: int = 19, root: int | None = None) -> list[int]:
    """Give Ray's service processes started under ``root`` (default: this process, the driver that
    started the local Ray) the nice value ``nice``; returns their pids.

    Call it after ``serve.start`` so that Serve's controller is among them. Raising a nice value needs
    no privilege; nothing here ever lowers one."""
    if nice <= 0:
        return []
    lowered = []
    for proc in psutil.Process(root or os.getpid()).children(recursive=True):
        try:
            cmdline = proc.cmdline()
        except psutil.Error:  # gone, or not ours
            continue
        if is_ray_service(cmdline) and lower_process(proc.pid, nice):
            lowered.append(proc.pid)
    log.debug("Ray service processes at nice %d: %s", nice, lowered)
    return lowered


# ---------------------------------------------------------------------------- Ray's control plane

LOOPBACK = "127.0.0.1"
# Ray's processes listen on loopback only when their node's address is exactly this one (the GCS, raylet and
# core workers: `node_ip_address == "127.0.0.1"`; the agents, metrics exporters and dashboard likewise). But
# ray.init turns a loopback `_node_ip_address` into the machine's address, unless Ray runs in its single-machine
# mode, the one it uses on macOS and Windows: this variable at 0 (read when `ray` is imported, into
# ray._private.ray_constants.ENABLE_RAY_CLUSTER).
SINGLE_MACHINE_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
AUTH_MODE_VAR = "RAY_AUTH_MODE"  # Ray 2.52+: "token" turns token authentication on; 2.60 does for ray.init()
GCS_PROBE_METHOD = "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo"  # a harmless read every GCS serves
INSECURE_HINT = "or start with --insecure true (KRONK_INSECURE=1) to accept the risk (docs/security.md)"


@contextmanager
def loopback_node() -> Iterator[str]:
    """Around ``ray.init`` of a local cluster: Ray in its single-machine mode, so that the node address
    :data:`LOOPBACK` (yielded, for ``_node_ip_address``) stays loopback and every Ray process of the cluster
    listens on loopback only. Restored after: this process may join or start other clusters later."""
    from ray._private import ray_constants

    before_env, before_const = os.environ.get(SINGLE_MACHINE_VAR), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE_VAR] = "0"  # Ray's processes started now read it when they import ray
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process imported ray already
    try:
        yield LOOPBACK
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before_const
        if before_env is None:
            os.environ.pop(SINGLE_MACHINE_VAR, None)
        else:
            os.environ[SINGLE_MACHINE_VAR] = before_env


def is_loopback_address(address: str) -> bool:
    """Whether a Ray address (``host:port``; not ``ray://``, ``auto`` or ``local``) names this machine's loopback:
    a cluster that listens there is joined with :func:`loopback_node` too (Ray would otherwise turn the address
    into the machine's, where nothing listens)."""
    return "://" not in address and is_loopback_host(address.rpartition(":")[0])


def token_auth_problem(environ: Mapping[str, str] | None = None) -> str | None:
    """Why a local Ray that ``ray.init`` starts with this environment would run without token authentication
    (None: it will have it). Ray 2.60 turns it on for a new local cluster unless RAY_AUTH_MODE says otherwise
    (and makes a token, ~/.ray/auth_token, when there is none)."""
    env = os.environ if environ is None else environ
    mode = env.get(AUTH_MODE_VAR)
    if mode is None or mode.strip().lower() == "token":
        return None
    return (f"{AUTH_MODE_VAR}={mode} turns Ray's token authentication off, and then anyone who reaches Ray's "
            f"ports can run code as this server; unset {AUTH_MODE_VAR} (or set it to token)")


def protect_token_file(environ: Mapping[str, str] | None = None) -> Path | None:
    """Make the file Ray reads its token from readable by its owner only; returns it when it was not.

    Ray writes ``~/.ray/auth_token`` (or reads ``RAY_AUTH_TOKEN_PATH``) with the default umask, so any user
    of the machine may read it, and with it reach the loopback ports. A token in ``RAY_AUTH_TOKEN`` instead
    is only in this process's environment (which other users cannot read). Files of other users are left
    alone."""
    env = os.environ if environ is None else environ
    if env.get("RAY_AUTH_TOKEN"):
        return None
    path = Path(env["RAY_AUTH_TOKEN_PATH"]).expanduser() if env.get("RAY_AUTH_TOKEN_PATH") else (
        Path(env.get("HOME") or Path.home()) / ".ray" / "auth_token")
    try:
        st = path.stat()
        if st.st_uid != os.getuid() or not st.st_mode & 0o077:
            return None
        path.chmod(st.st_mode & 0o700)
    except OSError:  # none yet (ray.init makes it), or not ours to change
        return None
    log.info("Ray's token file %s was readable by other users: now by its owner only", path)
    return path


def gcs_answers_without_token(address: str, timeout_s: float = 10.0) -> bool:
    """Whether the GCS at ``address`` (host:port) answers a client that sends no token: one plain gRPC call
    (none of Ray's interceptors), a harmless read. False when it refuses it as unauthenticated. Raises
    ``ConnectionError`` when the GCS cannot be asked at all."""
    import grpc

    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(GCS_PROBE_METHOD, request_serializer=None, response_deserializer=None)
        try:
            call(b"", timeout=timeout_s)  # an empty message: every field at its default
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                return False
            raise ConnectionError(f"cannot ask the Ray GCS at {address} whether it needs a token: "
                                  f"{e.code().name} {e.details()}") from None
    return True
