"""Processes and ports, Ray-free: liveness, process trees, graceful termination, free and busy ports, waiting for
a server's ``/health``. Used by the CLI (kronk/cli/procs.py adds its pid/info files), the launch sequence
(deployments/launch.py), the tests and the benchmarks."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import time
from typing import Any

import psutil


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's: it exists
        return True


def descendants(root: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_all(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive; the ones still alive at the deadline."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if alive(p)]
    return left


def terminate(pids: list[int], grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is left after ``grace_s``."""
    kill_all(pids, signal.SIGTERM)
    left = wait_gone(pids, grace_s)
    kill_all(left, signal.SIGKILL)
    wait_gone(left, 5.0)


def is_loopback_host(host: str) -> bool:
    """Whether a host (a name or an IP address, IPv6 brackets allowed, no port) is this machine's loopback."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (for tests and benchmarks that start servers)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """Something listens on host:port (checked by binding it, like the server will)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (98, 48):  # EADDRINUSE (Linux, macOS)
                return True
            raise
    return False


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Something accepts connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_healthy(url: str, timeout_s: float, proc: Any = None, poll_s: float = 0.25) -> bool:
    """Whether ``url``'s /health answers 200 within ``timeout_s``; RuntimeError if ``proc`` (a Popen) exits."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2.0, trust_env=False).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(poll_s)
    return False
