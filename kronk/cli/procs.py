"""Process bookkeeping for ``kronk server``: the pid/info files under the home, liveness, cleanup."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import psutil

PID_FILE = "server.pid"
INFO_FILE = "server.json"
LOG_FILE = Path("logs") / "server.log"


def log_path(home: Path) -> Path:
    return home / LOG_FILE


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's: it exists
        return True


def is_kronk(pid: int) -> bool:
    """The pid runs a kronk server (guards against a recycled pid)."""
    try:
        cmd = " ".join(psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return alive(pid)
    return "kronk" in cmd and "start" in cmd


def write_info(home: Path, info: dict[str, Any]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    for name, text in ((INFO_FILE, json.dumps(info, indent=2)), (PID_FILE, f"{info['pid']}\n")):
        tmp = home / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, home / name)


def read_info(home: Path) -> dict[str, Any] | None:
    """The running server's info from the home, or None (stale files of a dead server are ignored)."""
    info: dict[str, Any] | None = None
    with contextlib.suppress(OSError, ValueError):
        info = json.loads((home / INFO_FILE).read_text())
    if info is None:
        with contextlib.suppress(OSError, ValueError):
            info = {"pid": int((home / PID_FILE).read_text().strip())}
    if not info or not isinstance(info.get("pid"), int):
        return None
    pid = info["pid"]
    if not (alive(pid) and is_kronk(pid)):
        return None
    return info


def clear_info(home: Path, pid: int | None = None) -> None:
    """Remove the pid/info files (only if they name ``pid``, when given)."""
    if pid is not None:
        try:
            if int((home / PID_FILE).read_text().strip()) != pid:
                return
        except (OSError, ValueError):
            pass
    for name in (INFO_FILE, PID_FILE):
        (home / name).unlink(missing_ok=True)


def session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (a detached server is its session's leader)."""
    out = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == sid and alive(pid):
                out.append(pid)
        except OSError:  # gone
            pass
    return out


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


def client_host(host: str) -> str:
    """Where a local client reaches a server bound to ``host``."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


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
