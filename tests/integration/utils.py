"""A real local Serve app for integration tests (real Ray, real HTTP, real llama.cpp)."""

from __future__ import annotations

import socket
import tempfile
from contextlib import contextmanager
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_app(args: dict[str, Any], num_cpus: int = 4, timeout_s: float = 300.0):
    """Start Ray + Serve + kronk's app on a free port; yield its base URL; always shut everything down."""
    import ray
    from ray import serve

    from deployments.app import build_app, start_local_serve, wait_until_running
    from deployments.ray_env import apply_ray_env
    from kronk.cli.procs import wait_healthy

    apply_ray_env()  # the settings `kronk server start` runs Ray with
    home = tempfile.mkdtemp(prefix="kronk-test-")
    port = free_port()
    args = {"home": home, **args}
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"KRONK_HOME": home}})
    keeper = None
    try:
        args.update(host="127.0.0.1", port=port)  # where the replicas listen with http_front replica
        keeper = start_local_serve(args.get("http_front", "proxy"), "127.0.0.1", port)  # as `kronk server start`
        serve.run(build_app(args), name="kronk", route_prefix="/", blocking=False)
        wait_until_running("kronk", timeout_s)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, 60)
        yield url
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            if keeper is not None:
                keeper.close()
