"""A real local Serve app for integration tests (real Ray, real HTTP, real llama.cpp)."""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from typing import Any

from tests.helpers import free_port


@contextmanager
def serve_app(args: dict[str, Any], num_cpus: int = 4, timeout_s: float = 300.0):
    """Start Ray + Serve + kronk's app on a free port as `kronk server start` does (deployments.launch); yield
    its base URL; always shut everything down. ``args`` are Settings fields; the HTTP front is Serve's proxy
    unless they ask for ``http_front`` ``replica``."""
    from deployments.launch import launched

    home = tempfile.mkdtemp(prefix="kronk-test-")
    settings = {"home": home, "http_front": "proxy", **args, "host": "127.0.0.1", "port": free_port()}
    with launched(settings, num_cpus=num_cpus, start_timeout_s=timeout_s,
                  runtime_env={"env_vars": {"KRONK_HOME": settings["home"]}}) as url:
        yield url
