"""Bounded polling for tests: every wait has a deadline, and a timeout says what it waited for."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def until(cond: Callable[[], Any], timeout_s: float, what: str | Callable[[], str] = "the condition",
          interval_s: float = 0.1) -> Any:
    """``cond()``'s first truthy value, polled every ``interval_s``; after ``timeout_s`` an AssertionError
    naming ``what`` (a callable is asked only then, so it can describe the last state)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_s:g}s waiting for {detail}")
        time.sleep(interval_s)
