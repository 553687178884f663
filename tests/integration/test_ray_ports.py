"""Ray's control plane on a real local server (docs/security.md, "Ray's control plane").

Whoever reaches one of Ray's ports can run code as the server, unless Ray's token authentication turns them
away. With a real server running (deployments.launch, as `kronk server start`), every TCP port that this
process and its Ray processes listen on must listen on loopback only, or refuse a client without the token;
the GCS must turn away ``ray.init`` without the token; and kronk must refuse to join a cluster whose GCS
answers clients without a token.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import httpx
import psutil
import pytest

from deployments.ray_env import GCS_PROBE_METHOD, gcs_answers_without_token
from tests.helpers import SMOL
from tests.integration.utils import serve_app

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
MODEL = {"name": SMOL, "parallel": 1, "ctx_size": 512, "num_cpus": 1}
# a read-only call of each of Ray's gRPC services (an empty message): the server that hosts it answers
# UNAUTHENTICATED to a caller without the token, the others UNIMPLEMENTED
PROBES = ("/ray.rpc.NodeInfoGcsService/GetAllNodeInfo",  # GCS
          "/ray.rpc.NodeManagerService/GetNodeStats",  # raylet
          "/ray.rpc.ObjectManagerService/Pull",  # raylet's object manager
          "/ray.rpc.CoreWorkerService/GetCoreWorkerStats",  # drivers, workers, actors
          "/ray.rpc.ReporterService/HealthCheck",  # dashboard agent
          "/ray.rpc.LogService/ListLogs",  # dashboard agent
          # a Serve replica's server for handle calls: Serve binds it on every interface ([::]) whatever the node's
          # address, so only the token keeps others out (its requests are pickles: code, if it answered)
          "/ray.serve.ASGIService/HandleRequest")


def listening() -> list[tuple[int, str, str, int]]:
    """(pid, process name, address, port) of every listening TCP socket of this process and its descendants:
    the driver's own core worker and every process of the local Ray it started."""
    me = psutil.Process()
    found = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            name = " ".join(proc.cmdline()[:1]) or proc.name()
            for c in proc.net_connections(kind="tcp"):
                if c.status == psutil.CONN_LISTEN:
                    found.append((proc.pid, os.path.basename(name.split(" ")[0]), c.laddr.ip, c.laddr.port))
        except psutil.NoSuchProcess:
            continue
    return found


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:127.0.0.1: an IPv6 socket bound to the IPv4 loopback
    return addr.is_loopback


def refusal(ip: str, port: int) -> str | None:
    """How the server at ip:port turns away a caller without the token (None: it does not)."""
    host = "127.0.0.1" if ipaddress.ip_address(ip.split("%")[0]).is_unspecified else ip
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with urllib.request.urlopen(f"http://{target}/", timeout=5):
            return None  # an HTTP answer without a token
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            return f"HTTP {e.code}"
        return None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
        pass  # not HTTP/1: gRPC (HTTP/2)
    with grpc.insecure_channel(target) as channel:
        for method in PROBES:
            try:
                channel.unary_unary(method, request_serializer=None, response_deserializer=None)(b"", timeout=5)
                return None  # a Ray service answered without a token
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAUTHENTICATED:
                    return f"gRPC {method}: UNAUTHENTICATED"
    return None


CLUSTER_WITHOUT_TOKEN = """
import sys
import ray
from deployments.ray_env import loopback_node
with loopback_node() as ip:
    ray.init(address="local", num_cpus=1, include_dashboard=False, _node_ip_address=ip, log_to_driver=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()  # until the test closes stdin
ray.shutdown()
"""


# first in this module: it needs this process without a Ray (the server fixture below lives until the module ends)
def test_joining_a_cluster_without_token_authentication_is_refused(tmp_path) -> None:
    import ray

    from deployments.launch import InsecureRay, Launch

    assert not ray.is_initialized()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "HOME": str(tmp_path), "RAY_USAGE_STATS_ENABLED": "0"}
    cluster = subprocess.Popen([sys.executable, "-c", CLUSTER_WITHOUT_TOKEN], env=env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert cluster.stdout is not None
        gcs = cluster.stdout.readline().strip()
        assert gcs.startswith("127.0.0.1:"), gcs
        assert gcs_answers_without_token(gcs)
        said: list[str] = []
        launch = Launch({"home": str(tmp_path / "home"), "address": gcs, "models": [MODEL]}, say=said.append,
                        start_timeout_s=60, health_timeout_s=10)
        try:
            with pytest.raises(InsecureRay) as e:
                launch.start()
        finally:
            launch.stop()
        msg = str(e.value)
        assert f"the Ray GCS at {gcs} answers clients without a token" in msg
        assert "RAY_AUTH_MODE=token" in msg and "--insecure" in msg, msg
        assert not ray.is_initialized()
        assert not any(line.startswith("deploying") for line in said), said  # refused before deploying anything
    finally:
        assert cluster.stdin is not None
        cluster.stdin.close()
        try:
            cluster.wait(timeout=60)
        except subprocess.TimeoutExpired:
            cluster.kill()
            cluster.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve_app({"home": str(tmp_path_factory.mktemp("kronk-home")), "models": [MODEL]}) as url:
        yield url


def test_every_ray_port_listens_on_loopback_only_or_needs_the_token(server: str) -> None:
    assert httpx.get(f"{server}/health", timeout=30).status_code == 200
    sockets = listening()
    names = {name for _, name, _, _ in sockets}
    # not vacuous: the GCS, the raylet and Ray's workers (Serve's controller, proxy, the model's replica) listen
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::") for n in names), sockets
    open_ports = []
    for pid, name, ip, port in sockets:
        if not is_loopback(ip) and refusal(ip, port) is None:
            open_ports.append(f"{name} (pid {pid}) on {ip}:{port}")
    assert open_ports == [], f"reachable from other machines and answering without Ray's token: {open_ports}"
    # the token itself is the owner's only (Ray writes ~/.ray/auth_token readable by every user)
    if not os.environ.get("RAY_AUTH_TOKEN"):
        token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
        assert token.stat().st_mode & 0o077 == 0, oct(token.stat().st_mode)


def test_the_gcs_turns_away_a_client_without_the_token(server: str, tmp_path) -> None:
    import ray
    from ray._raylet import AuthenticationTokenLoader

    gcs = ray.get_runtime_context().gcs_address
    assert not gcs_answers_without_token(gcs)
    # the same call with the token is answered: the refusal is the token's, not a broken probe
    token = AuthenticationTokenLoader.instance().get_token_for_http_header()
    with grpc.insecure_channel(gcs) as channel:
        channel.unary_unary(GCS_PROBE_METHOD, request_serializer=None, response_deserializer=None)(
            b"", timeout=10, metadata=tuple(token.items()))
    # a Ray driver without the token (another user on this machine: no RAY_AUTH_*, another home)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
    # (single-machine mode, or Ray turns the loopback address into the machine's, where nothing listens)
    env.update(HOME=str(tmp_path), RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    code = ("import sys, ray\n"
            "ray.init(address=sys.argv[1], log_to_driver=False)\n"
            "print('CONNECTED', flush=True)\n"
            "ray.shutdown()\n")
    r = subprocess.run([sys.executable, "-c", code, gcs], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "CONNECTED" not in r.stdout, r.stdout + r.stderr
    assert "AuthenticationError" in r.stderr, r.stderr[-2000:]  # turned away for the token, not unreachable
