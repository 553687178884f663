"""The processes a test started (Ray's among them), found by name, and the nice values of their threads."""

from __future__ import annotations

import os

import psutil

from deployments.ray_env import process_name


def processes_named(prefix: str, root: int | None = None) -> list[psutil.Process]:
    """Live processes under ``root`` (default: this one) whose ``process_name`` starts with ``prefix``."""
    found = []
    for p in psutil.Process(root or os.getpid()).children(recursive=True):
        try:
            if process_name(p.cmdline()).startswith(prefix):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def thread_nices(prefix: str, root: int | None = None) -> set[int]:
    """The nice values of every thread of ``processes_named(prefix, root)``; at least one must exist."""
    procs = processes_named(prefix, root)
    assert procs, f"no process named {prefix}* under {root or os.getpid()}"
    return {os.getpriority(os.PRIO_PROCESS, t.id) for p in procs for t in p.threads()}
