"""The Ray settings kronk starts its local cluster with are defaults: the user's environment wins."""

import os
import subprocess
import sys
from pathlib import Path

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
