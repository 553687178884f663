"""Cross-process (and cross-node, on shared storage) locks: one lock file per model.

Lock files live in ``<models_dir>/.locks/`` and are never deleted (deleting a lock
file while another process waits on it would let two holders in).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from kronk.store.errors import PullCancelled, StoreError

LOCK_DIR = ".locks"


def lock_path(root: Path, dirname: str) -> Path:
    d = Path(root) / LOCK_DIR
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{dirname}.lock"


@contextmanager
def model_lock(
    root: Path, dirname: str, cancel: threading.Event | None = None, timeout: float | None = None
) -> Iterator[None]:
    """Hold the model's lock; wait for another holder (a pull in another process or node)."""
    lock = FileLock(str(lock_path(root, dirname)))
    try:
        lock.acquire(
            timeout=-1 if timeout is None else timeout,
            poll_interval=0.1,
            cancel_check=cancel.is_set if cancel is not None else None,
        )
    except Timeout:
        if cancel is not None and cancel.is_set():
            raise PullCancelled(f"cancelled while waiting for another pull of {dirname}") from None
        raise StoreError(f"timed out after {timeout} s waiting for another operation on {dirname}") from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def try_model_lock(root: Path, dirname: str) -> Iterator[bool]:
    """Take the lock if free; yields False (without waiting) when another holder has it."""
    lock = FileLock(str(lock_path(root, dirname)))
    try:
        lock.acquire(blocking=False)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
