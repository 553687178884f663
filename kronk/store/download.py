"""One file from the hub into a temp name, resumable, verified.

The bytes land in a partial file (``.<file>.<sha12>.part`` in the model's folder).
A retry, or a later pull, continues from the partial's length with an HTTP Range
request; the sha256 is computed while streaming (the partial's existing bytes are
hashed first). At the end the size and sha256 are checked: a mismatch deletes the
partial and raises :class:`ChecksumMismatch`. The caller renames the result.

The expected size (the hub's metadata, else the first response's headers) is a hard
limit: a response that announces more, or a body that runs past it, is refused before
the extra bytes reach the disk (:class:`SizeMismatch`; the partial is deleted), so a
hub cannot fill the models dir by sending more than it said.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from pathlib import Path

import httpx

from kronk.store.errors import ChecksumMismatch, HubError, PullCancelled, SizeMismatch
from kronk.store.hub import HubClient
from kronk.store.progress import ProgressTracker

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
HASH_BLOCK = 1 << 20


def hash_file(path: Path, tracker: ProgressTracker | None = None, limit: int | None = None) -> str:
    """sha256 of a file (of its first ``limit`` bytes), streaming."""
    return _hash_into(hashlib.sha256(), path, limit, tracker).hexdigest()


def _hash_into(h: hashlib._Hash, path: Path, limit: int | None, tracker: ProgressTracker | None = None):
    left = limit
    with open(path, "rb") as fh:
        while left is None or left > 0:
            block = fh.read(HASH_BLOCK if left is None else min(HASH_BLOCK, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
            if tracker is not None:
                tracker.add(len(block))
    return h


def _retryable(e: Exception) -> bool:
    return isinstance(e, httpx.TransportError) or (isinstance(e, HubError) and e.code == "hub_http_error")


def download_file(
    hub: HubClient,
    *,
    repo: str,
    commit: str,
    path: str,
    part: Path,
    size: int | None,
    sha256: str | None,
    tracker: ProgressTracker,
    cancel: threading.Event | None = None,
    retries: int = 3,
    backoff_s: float = 0.5,
) -> str:
    """Download ``path`` of ``repo``@``commit`` into ``part``; return its verified sha256 (hex)."""
    url = hub.file_url(repo, commit, path)
    st = _State(size)
    credited = 0  # bytes of this file counted in tracker.bytes_done
    failures = 0
    while True:
        size = st.size  # the hub's metadata, else what the first response announced
        offset = part.stat().st_size if part.exists() else 0
        if size is not None and offset > size:
            part.unlink()
            offset = 0
        if offset != st.hashed:  # (re)hash what is on disk: a partial left by an earlier pull
            st.h = _hash_into(hashlib.sha256(), part, offset) if offset else hashlib.sha256()
            st.hashed = offset
        if offset != credited:
            tracker.add_existing(offset - credited)
            credited = offset
        if size is not None and offset == size:
            break
        try:
            done = _fetch(hub, url, part, st, tracker, cancel, repo=repo, path=path)
        except PullCancelled:
            raise
        except Exception as e:
            if not _retryable(e):
                raise
            failures += 1
            if failures > retries:
                raise HubError(
                    f"downloading {path} from {repo} failed after {failures} attempts ({type(e).__name__}: "
                    f"{hub.scrub(str(e))}); pull again to resume from {st.hashed} bytes"
                ) from None
            _sleep(backoff_s * 2 ** (failures - 1), cancel)
            done = False
        finally:
            credited = st.hashed if part.exists() else credited
        if done:
            break
    size = st.size
    tracker.set_phase("verifying", os.path.basename(path))
    actual = part.stat().st_size
    digest = st.h.hexdigest() if actual == st.hashed else hash_file(part)
    if size is not None and actual != size:
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(f"{path} from {repo}: got {actual} bytes, expected {size}; the download was discarded")
    if sha256 is not None and digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"{path} from {repo}: sha256 {digest} does not match the expected {sha256}; "
            "the download was discarded, pull again"
        )
    with open(part, "rb+") as fh:
        os.fsync(fh.fileno())
    return digest


class _State:
    """The running sha256, how many bytes of the partial it has seen, and the size the file must have."""

    def __init__(self, size: int | None) -> None:
        self.h = hashlib.sha256()
        self.hashed = 0
        self.size = size


def _announced(resp: httpx.Response, offset: int) -> int | None:
    """The largest file size a response announces (Content-Range's total or end, Content-Length), if any."""
    sizes = []
    if resp.status_code == 206:
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if m:
            sizes.append(int(m.group(2)) + 1)
            if m.group(3) != "*":
                sizes.append(int(m.group(3)))
    length = resp.headers.get("Content-Length", "")
    if length.isdigit():
        sizes.append(int(length) + (offset if resp.status_code == 206 else 0))
    return max(sizes) if sizes else None


def _too_large(path: str, repo: str, size: int, announced: int | None = None) -> SizeMismatch:
    what = f"announces {announced} bytes, more than" if announced is not None else "sent more than"
    return SizeMismatch(f"{path} from {repo}: the hub {what} the expected {size} bytes; nothing was written "
                        "past that size and the download was discarded")


def _fetch(
    hub: HubClient,
    url: str,
    part: Path,
    st: _State,
    tracker: ProgressTracker,
    cancel: threading.Event | None,
    *,
    repo: str,
    path: str,
) -> bool:
    """One GET from byte ``st.hashed``; True when the body was read to its end, False to start over."""
    offset = st.hashed
    with hub.get(url, offset, repo=repo, path=path) as resp:
        restart = resp.status_code == 416 or (resp.status_code == 200 and offset > 0)
        if resp.status_code == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            restart = not m or int(m.group(1)) != offset
        if restart:  # the partial is not a prefix of what the server sends: start over
            part.unlink(missing_ok=True)
            return False
        announced = _announced(resp, offset)
        if st.size is None:
            st.size = announced
        elif announced is not None and announced > st.size:  # refused before a byte of it is written
            part.unlink(missing_ok=True)
            raise _too_large(path, repo, st.size, announced)
        tracker.set_phase("downloading", os.path.basename(path))
        try:
            with open(part, "ab") as fh:
                for chunk in resp.iter_bytes():
                    if cancel is not None and cancel.is_set():
                        raise PullCancelled(f"pull of {path} cancelled; the partial download is kept for resume")
                    if st.size is not None and st.hashed + len(chunk) > st.size:  # never write past the size
                        raise _too_large(path, repo, st.size)
                    fh.write(chunk)
                    st.h.update(chunk)
                    st.hashed += len(chunk)
                    tracker.add(len(chunk))
        except SizeMismatch:
            part.unlink(missing_ok=True)
            raise
    return True


def _sleep(seconds: float, cancel: threading.Event | None) -> None:
    if cancel is None:
        time.sleep(seconds)
    elif cancel.wait(seconds):
        raise PullCancelled("pull cancelled")
