"""Process bookkeeping for ``kronk server``: the pid/info files under the home, sessions; the generic process and
port helpers it uses come from kronk.processes (and are named here too, as the CLI's)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import psutil

from kronk.processes import (  # noqa: F401 - the CLI's process helpers
    alive,
    descendants,
    kill_all,
    port_in_use,
    port_open,
    terminate,
    wait_gone,
    wait_healthy,
)

PID_FILE = "server.pid"
INFO_FILE = "server.json"
LOG_FILE = Path("logs") / "server.log"


def log_path(home: Path) -> Path:
    return home / LOG_FILE


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


def client_host(host: str) -> str:
    """Where a local client reaches a server bound to ``host``."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host in ("::", "[::]"):
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


