"""`serve run serve_config.yaml`, as a user runs it: the shipped config, a real Serve process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.utils import free_port
from tests.waiting import until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_serve_run_serve_config_yaml(tmp_path):
    cfg = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    port = free_port()
    cfg["http_options"]["port"] = port  # only the port differs from the shipped file
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "KRONK_HOME": str(tmp_path / "home"), "RAY_USAGE_STATS_ENABLED": "0"}
    serve = Path(sys.executable).parent / "serve"
    proc = subprocess.Popen([str(serve), "run", str(path)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        until(up, 240, lambda: "the app: " + (proc.stdout.read1().decode() if proc.poll() is not None
                                                else "still starting"), 1)
        r = httpx.post(url + "/v1/chat/completions", timeout=60, json={
            "model": "gemma3-270m", "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": "Hello"}]})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
        models = httpx.get(url + "/v1/models", timeout=10).json()["data"]
        assert models[0]["id"] == "gemma3-270m" and models[0]["context_length"] == 8192
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        # `serve run` started its own Ray cluster in this process group: nothing of it may outlive the test
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    until(lambda: not _session_processes(proc.pid), 15,
          lambda: f"Ray's processes to exit: {_session_processes(proc.pid)}")


def _session_processes(sid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == sid:
                    out.append(int(d.name))
            except (ProcessLookupError, PermissionError):
                pass
    return out
