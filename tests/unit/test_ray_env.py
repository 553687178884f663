"""The Ray settings kronk starts its local cluster with: defaults the user's environment overrides, and Ray's
control plane kept to loopback with token authentication on (docs/security.md)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deployments.ray_env import RAY_ENV, apply_ray_env
from tests.waiting import until


def test_sets_what_is_missing_and_keeps_what_is_set():
    env = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.1", "PATH": "/bin"}
    applied = apply_ray_env(env)
    assert env["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "0.1"  # the user's value
    assert env["RAY_enable_worker_prestart"] == "0" and env["RAY_prestart_worker_first_driver"] == "0"
    assert applied == {k: env[k] for k in RAY_ENV} and env["PATH"] == "/bin"


def test_the_controller_interval_is_one_ray_serve_reads():
    # the name must be Ray's own, or the setting silently does nothing
    from ray.serve._private import constants

    src = Path(constants.__file__).read_text()
    assert '"RAY_SERVE_CONTROL_LOOP_INTERVAL_S"' in src


def test_the_log_monitor_settings_are_ones_it_reads():
    from ray._private import log_monitor

    src = Path(log_monitor.__file__).read_text()
    assert 'os.getenv("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD"' in src
    assert 'os.getenv("LOG_NAME_UPDATE_INTERVAL_S"' in src


def test_ray_services_are_known_by_their_command_lines():
    from deployments.ray_env import is_ray_service

    assert is_ray_service(["/venv/lib/ray/core/src/ray/gcs/gcs_server", "--log_dir=/tmp"])
    assert not is_ray_service(["/venv/lib/ray/core/src/ray/raylet/raylet", "--raylet_socket_name=x"])  # forks workers
    assert is_ray_service(["/venv/bin/python", "-u", "/venv/lib/ray/_private/log_monitor.py", "--session-dir=x"])
    assert is_ray_service(["/venv/bin/python3.11", "/venv/lib/ray/dashboard/dashboard.py", "--host=127.0.0.1"])
    assert is_ray_service(["ray::ServeController"]) and is_ray_service(["ray::DashboardAgent   "])
    # the request path, and idle workers that may become a model replica, keep their priority
    assert not is_ray_service(["ray::ServeReplica:kronk:llm-gemma3-270m"])
    assert not is_ray_service(["ray::ProxyActor"]) and not is_ray_service(["ray::IDLE"])
    assert not is_ray_service(["/venv/bin/python", "-m", "pytest"]) and not is_ray_service([])


def test_lower_ray_services_lowers_only_ray_services_under_the_root(tmp_path):
    from deployments.ray_env import lower_ray_services

    (tmp_path / "log_monitor.py").write_text("import time\ntime.sleep(60)\n")
    # a tree like the one ray.init starts: services and workers, some of them grandchildren
    script = (f"(exec -a gcs_server sleep 60) & (exec -a ray::ServeController sleep 60) & "
              f"(exec -a ray::ServeReplica:kronk:llm-x sleep 60) & (exec -a ray::IDLE sleep 60) & "
              f"{sys.executable} -u {tmp_path / 'log_monitor.py'} & wait")
    root = subprocess.Popen(["bash", "-c", script])
    outsider = subprocess.Popen(["bash", "-c", "exec -a gcs_server sleep 60"])  # not under the root
    try:
        names: dict[str, int] = {}

        def tree_started() -> bool:
            names.clear()
            for line in subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(root.pid)], capture_output=True,
                                       text=True).stdout.splitlines():
                pid, args = line.strip().split(" ", 1)
                names[args.split(" ")[0] if "log_monitor" not in args else "log_monitor"] = int(pid)
            return set(names) == {"gcs_server", "ray::ServeController", "ray::ServeReplica:kronk:llm-x", "ray::IDLE",
                                  "log_monitor"}

        until(tree_started, 10, lambda: f"the test's process tree to start (saw {names})")
        assert lower_ray_services(0, root=root.pid) == []
        lowered = lower_ray_services(19, root=root.pid)
        assert sorted(lowered) == sorted(names[n] for n in ("gcs_server", "ray::ServeController", "log_monitor"))
        for name, pid in names.items():
            want = 19 if pid in lowered else 0
            assert os.getpriority(os.PRIO_PROCESS, pid) == want, name
        assert os.getpriority(os.PRIO_PROCESS, outsider.pid) == 0
        assert os.getpriority(os.PRIO_PROCESS, root.pid) == 0
    finally:
        for p in (root, outsider):
            subprocess.run(["pkill", "-P", str(p.pid)])
            p.kill()
            p.wait()


def test_serve_config_tells_serve_run_users_every_setting():
    text = (Path(__file__).resolve().parents[2] / "serve_config.yaml").read_text()
    exported = {w.split("=")[0]: w.split("=")[1] for line in text.splitlines() if line.startswith("#")
                for w in line.replace("export", " ").replace("\\", " ").replace("#", " ").split() if "=" in w}
    assert {k: exported.get(k) for k in RAY_ENV} == RAY_ENV


# ---------------------------------------------------------------------------- Ray's control plane


def test_the_control_plane_settings_are_names_ray_reads():
    # the names must be Ray's own, or the settings silently do nothing
    from ray._private import ray_constants
    from ray._private.authentication import authentication_token_setup
    from ray.core.generated import gcs_service_pb2_grpc

    from deployments.ray_env import AUTH_MODE_VAR, GCS_PROBE_METHOD, SINGLE_MACHINE_VAR

    assert ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR == SINGLE_MACHINE_VAR
    assert authentication_token_setup.AUTH_MODE_ENV_VAR == AUTH_MODE_VAR
    assert f"'{GCS_PROBE_METHOD}'" in Path(gcs_service_pb2_grpc.__file__).read_text()


def test_loopback_node_keeps_the_node_address_loopback_and_restores_ray_after(monkeypatch):
    from ray._private import ray_constants, services

    from deployments.ray_env import LOOPBACK, SINGLE_MACHINE_VAR, loopback_node

    monkeypatch.delenv(SINGLE_MACHINE_VAR, raising=False)
    before = ray_constants.ENABLE_RAY_CLUSTER
    with loopback_node() as ip:
        assert ip == LOOPBACK
        # what ray.init does with _node_ip_address: without loopback_node it becomes the machine's address
        assert services.resolve_ip_for_localhost(ip) == LOOPBACK
        assert os.environ[SINGLE_MACHINE_VAR] == "0"  # Ray's processes started now read it
    assert ray_constants.ENABLE_RAY_CLUSTER is before and SINGLE_MACHINE_VAR not in os.environ
    monkeypatch.setenv(SINGLE_MACHINE_VAR, "1")
    with loopback_node():
        pass
    assert os.environ[SINGLE_MACHINE_VAR] == "1"


def test_token_auth_problem_names_the_fix():
    from deployments.ray_env import token_auth_problem

    assert token_auth_problem({}) is None  # Ray 2.60 turns it on for a new local cluster
    assert token_auth_problem({"RAY_AUTH_MODE": "token"}) is None
    assert token_auth_problem({"RAY_AUTH_MODE": " TOKEN "}) is None
    problem = token_auth_problem({"RAY_AUTH_MODE": "disabled"})
    assert problem and "RAY_AUTH_MODE=disabled" in problem and "unset RAY_AUTH_MODE" in problem


def test_launch_refuses_a_local_ray_without_token_authentication_before_starting_it(monkeypatch, tmp_path):
    import ray

    from deployments.launch import InsecureRay, Launch
    from kronk.processes import descendants

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    before = set(descendants(os.getpid()))
    said: list[str] = []
    launch = Launch({"home": str(tmp_path)}, say=said.append)
    try:
        with pytest.raises(InsecureRay) as e:
            launch.start()
    finally:
        launch.stop()
    msg = str(e.value)
    assert "RAY_AUTH_MODE=disabled turns Ray's token authentication off" in msg
    assert "unset RAY_AUTH_MODE" in msg and "--insecure true (KRONK_INSECURE=1)" in msg
    assert not ray.is_initialized() and set(descendants(os.getpid())) == before  # nothing was started
    assert not any("starting a local Ray" in line for line in said)


def test_loopback_addresses_are_known():
    from deployments.ray_env import is_loopback_address

    for address in ("127.0.0.1:6379", "localhost:6379", "[::1]:6379", "127.0.0.2:1"):
        assert is_loopback_address(address), address
    for address in ("10.0.0.5:6379", "ray://127.0.0.1:10001", "auto", "local", "head.kronk.svc:6379"):
        assert not is_loopback_address(address), address


def test_insecure_only_warns(tmp_path):
    from deployments.launch import InsecureRay, Launch

    said: list[str] = []
    with pytest.raises(InsecureRay, match="open, or start with --insecure true"):
        Launch({"home": str(tmp_path)}, say=said.append)._insecure("open")
    Launch({"home": str(tmp_path), "insecure": True}, say=said.append)._insecure("open")
    assert said == ["WARNING (--insecure): open"]


def test_the_token_file_is_kept_from_other_users(tmp_path):
    from deployments.ray_env import protect_token_file

    token = tmp_path / ".ray" / "auth_token"
    assert protect_token_file({"HOME": str(tmp_path)}) is None  # none yet: ray.init makes it
    token.parent.mkdir()
    token.write_text("t" * 64)
    token.chmod(0o644)  # as Ray writes it, with the usual umask
    assert protect_token_file({"HOME": str(tmp_path)}) == token
    assert token.stat().st_mode & 0o777 == 0o600
    assert protect_token_file({"HOME": str(tmp_path)}) is None  # already private
    other = tmp_path / "elsewhere"
    other.write_text("t" * 64)
    other.chmod(0o640)
    assert protect_token_file({"RAY_AUTH_TOKEN_PATH": str(other)}) == other and other.stat().st_mode & 0o777 == 0o600
    assert protect_token_file({"RAY_AUTH_TOKEN": "x", "HOME": str(tmp_path)}) is None  # only in the environment
