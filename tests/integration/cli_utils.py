"""Helpers for running the `kronk` CLI as a subprocess in tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from kronk.cli.procs import alive, session_members  # noqa: F401 - the CLI's own process checks, used by the tests
from kronk.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
KRONK = [sys.executable, "-m", "kronk.cli.main"]
# Variables from the developer's shell that would change what the CLI does.
_DROP = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "RAY_ADDRESS")


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The test's environment: no KRONK_* / HF_* from outside, its own home, and no server by default
    (KRONK_URL points at a closed port, so client commands never reach someone else's server)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRONK_") and k not in _DROP}
    env.update({"KRONK_HOME": str(home), "KRONK_URL": f"http://127.0.0.1:{free_port()}",
                "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "160"})
    env.update(extra)
    return env


def kronk(*args: str, env: dict[str, str], timeout: float = 60, input: str | None = None,
          check: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run `kronk ARGS`; ``check`` asserts the exit code."""
    p = subprocess.run([*KRONK, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       input=input, stdin=None if input is not None else subprocess.DEVNULL)
    if check is not None:
        assert p.returncode == check, f"kronk {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def kronk_json(*args: str, env: dict[str, str], timeout: float = 60) -> Any:
    p = kronk(*args, env=env, timeout=timeout, check=0)
    return json.loads(p.stdout)




def kill_session(sid: int) -> None:
    """Last-resort cleanup of everything a test's server started (only that session)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_members(sid):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + 5
        while session_members(sid) and time.monotonic() < deadline:
            time.sleep(0.1)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def get_json(url: str, timeout: float = 10) -> Any:
    r = httpx.get(url, timeout=timeout, trust_env=False)
    r.raise_for_status()
    return r.json()
