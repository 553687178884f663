"""The Ray settings kronk starts its local cluster with are defaults: the user's environment wins."""

from pathlib import Path

from deployments.ray_env import RAY_ENV, apply_ray_env


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
