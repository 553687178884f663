"""Prefix caches beyond the slots: the KV state of sequences, kept in host memory and on disk.

A slot's KV is the first tier (kronk/engine/engine.py reuses and shares it). When a slot is given to another
prompt, what it held is saved as a :class:`Snapshot` (``llama_state_seq_get_data``: the sequence's KV cells,
and the tokens they hold) into the **RAM tier** (:class:`RamPrefixCache`, least recently used first out of a
byte budget). A finished conversation is written to the **disk tier** (:class:`DiskPrefixCache`, the models'
shared storage: it survives a restart and is seen by every replica that mounts it; bounded, oldest first out).
A prompt that starts with what a snapshot holds gets that KV restored into its slot
(``llama_state_seq_set_data``) and prefills only the rest.

Provably right, not probably: a snapshot is found through hashes of its token blocks, but used only after its
whole token list is compared with the prompt (the reuse is exactly the common prefix of the two, however the
hashes fell). Every snapshot carries the :class:`Identity` of what computed it (the model file, llama.cpp's
build and the CPU features it runs with, the chat template, the KV types, flash attention, the slot context,
weight repacking, the prefill grid); one of another identity is never used: the disk tier keeps each identity
in a folder of its own and checks the identity and a checksum of the tokens and the KV data in every file it
reads, and deletes a file that fails. Restoring gives the slot exactly the KV it held when the snapshot was
taken, so the answer is the one the conversation would have got had it kept its slot.

Sliding-window models (Gemma 2/3, gpt-oss...): llama.cpp restores only the window of a snapshot's sliding-window
layers (the cells its last position still attends to), so such a snapshot of ``L`` tokens can be cut no lower
than ``L - 1`` (it continues a conversation, or serves a prompt it holds whole), and a slot restored from one
cannot be cut lower either (:class:`Window`). So that a shared start (a system prompt) is still found, the
engine keeps a second snapshot of a slot's exact prefix for these models.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import struct
import threading
import time
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger("kronk.engine")

# Tokens per hashed block: a snapshot is indexed by the chained hash of each whole block of its tokens.
BLOCK_TOKENS = 64
# Blocks hashed per prompt (a longer common prefix is still found: the candidates' tokens are compared in full).
MAX_BLOCKS = 4096


def block_hash(prev: bytes, block: Sequence[int]) -> bytes:
    """The chained hash of one block of tokens after the blocks hashed into ``prev``."""
    return hashlib.blake2b(prev + array("i", block).tobytes(), digest_size=16).digest()


def block_hashes(tokens: Sequence[int], n_blocks: int | None = None) -> list[bytes]:
    """Chained hashes of the whole leading blocks of ``tokens`` (at most ``n_blocks``, :data:`MAX_BLOCKS`)."""
    out: list[bytes] = []
    prev = b""
    limit = min(len(tokens) // BLOCK_TOKENS, MAX_BLOCKS if n_blocks is None else n_blocks)
    for i in range(limit):
        prev = block_hash(prev, tokens[i * BLOCK_TOKENS:(i + 1) * BLOCK_TOKENS])
        out.append(prev)
    return out


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int | None = None) -> int:
    """How many leading tokens ``a`` and ``b`` share (at most ``limit``): whole blocks compared as slices, then
    token by token (prompts of thousands of tokens are compared against every slot and snapshot)."""
    n = min(len(a), len(b)) if limit is None else max(0, min(len(a), len(b), limit))
    if type(a) is not type(b):  # a tuple's slice never equals a list's: compare as lists (a snapshot's tokens)
        a, b = list(a[:n]), list(b[:n])
    i, block = 0, 256
    while i + block <= n and a[i:i + block] == b[i:i + block]:
        i += block
    while i < n and a[i] == b[i]:
        i += 1
    return i


def file_fingerprint(path: str | Path, edge: int = 1 << 20) -> str:
    """A model file's identity: its size and a hash of its first and last MiB (its header, and the end of its
    tensor data): another build or quantization of a model differs in them."""
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.blake2b(str(size).encode(), digest_size=16)
    with p.open("rb") as f:
        h.update(f.read(edge))
        if size > edge:
            f.seek(max(edge, size - edge))
            h.update(f.read(edge))
    return h.hexdigest()


@dataclass(frozen=True)
class Window:
    """Where a sequence may be cut, given the model's sliding window (``n_swa`` tokens; 0: none).

    A sequence whose sliding-window cells start at position ``floor`` (0: all there) can be cut to its first
    ``n`` tokens and go on only when the next position's window lies within what is there: ``n == 0``, or
    ``n >= floor + n_swa - 1``. A snapshot of ``L`` tokens is restored with its cells from ``L - n_swa`` on."""

    n_swa: int = 0

    def floor(self, n_tokens: int) -> int:
        """The first position whose sliding-window cells a restored snapshot of ``n_tokens`` holds."""
        return max(0, n_tokens - self.n_swa) if self.n_swa else 0

    def keeps(self, floor: int, n: int) -> bool:
        """Whether a sequence with sliding-window cells from ``floor`` on may be cut to ``n`` tokens."""
        return n == 0 or floor == 0 or n >= floor + self.n_swa - 1

    def usable(self, n_tokens: int, n: int) -> bool:
        """Whether a snapshot of ``n_tokens`` serves a prompt with ``n`` of them."""
        return self.keeps(self.floor(n_tokens), n)


@dataclass(frozen=True)
class Identity:
    """What computed a KV state: a snapshot is only restored into an engine of the same identity."""

    fields: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, **fields: Any) -> Identity:
        return cls(tuple(sorted((k, str(v)) for k, v in fields.items())))

    @property
    def digest(self) -> str:
        return hashlib.blake2b(json.dumps(self.fields).encode(), digest_size=16).hexdigest()

    def as_dict(self) -> dict[str, str]:
        return dict(self.fields)


@dataclass
class Snapshot:
    """One sequence's KV state: the tokens its cells hold (positions 0..n-1) and llama.cpp's bytes of them."""

    tokens: tuple[int, ...]
    exact: int  # the leading tokens computed in whole prefill-grid chunks from position 0 (Slot.exact)
    data: bytes | bytearray
    identity: str  # Identity.digest

    @property
    def nbytes(self) -> int:
        return len(self.data) + 4 * len(self.tokens)


@dataclass
class TierCounters:
    """One tier's numbers since the engine started (EngineStats.prefix_cache)."""

    hits: int = 0  # requests that got prompt tokens from this tier
    misses: int = 0  # requests that looked in this tier and got none
    tokens: int = 0  # prompt tokens this tier served
    evictions: int = 0  # entries (slot contents, snapshots) given up
    writes: int = 0  # snapshots stored

    def as_dict(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "tokens": self.tokens, "evictions": self.evictions,
                "writes": self.writes}


class _BlockIndex:
    """Chained block hash -> the keys of the entries whose tokens start with those blocks."""

    def __init__(self) -> None:
        self._by_hash: dict[bytes, set[Any]] = {}
        self._hashes: dict[Any, list[bytes]] = {}

    def add(self, key: Any, tokens: Sequence[int]) -> None:
        hashes = block_hashes(tokens)
        self._hashes[key] = hashes
        for h in hashes:
            self._by_hash.setdefault(h, set()).add(key)

    def remove(self, key: Any) -> None:
        for h in self._hashes.pop(key, ()):
            keys = self._by_hash.get(h)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_hash[h]

    def candidates(self, prompt: Sequence[int]) -> list[Any]:
        """Keys of the entries sharing at least one leading block with ``prompt`` (by hash: to be verified),
        those sharing more first (with a sliding window a longer one may not serve the prompt: the caller
        checks each)."""
        levels: list[set[Any]] = []
        for h in block_hashes(prompt):
            keys = self._by_hash.get(h)
            if not keys:
                break
            levels.append(keys)
        out: list[Any] = []
        seen: set[Any] = set()
        for keys in reversed(levels):
            for k in keys - seen:
                out.append(k)
            seen |= keys
        return out


def _best(prompt: Sequence[int], limit: int, entries: Iterable[tuple[Any, Sequence[int]]],
          window: Window) -> tuple[Any, int] | None:
    """The usable entry whose tokens share the longest prefix with ``prompt`` (compared token by token), and its
    length."""
    found: tuple[Any, int] | None = None
    for key, tokens in entries:
        n = common_prefix(tokens, prompt, limit)
        if n > 0 and (found is None or n > found[1]) and window.usable(len(tokens), n):
            found = (key, n)
    return found


def _covers(window: Window, held: Sequence[int], tokens: Sequence[int]) -> bool:
    """Whether a snapshot of ``held`` serves everything one of ``tokens`` would."""
    return (len(held) >= len(tokens) and common_prefix(held, tokens) == len(tokens)
            and window.usable(len(held), max(0, len(tokens) - 1))
            and window.floor(len(held)) <= window.floor(len(tokens)))


class RamPrefixCache:
    """Snapshots in host memory within ``budget_bytes``, least recently used out first. Thread-safe."""

    def __init__(self, budget_bytes: int, identity: Identity, window: Window | None = None):
        self.budget_bytes = budget_bytes
        self.identity = identity.digest
        self.window = window or Window()
        self.counters = TierCounters()
        self.bytes = 0
        self._entries: collections.OrderedDict[int, Snapshot] = collections.OrderedDict()
        self._index = _BlockIndex()
        self._next = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, prompt: Sequence[int], limit: int, touch: bool = True) -> tuple[Snapshot, int] | None:
        """The snapshot sharing the longest prefix (at most ``limit`` tokens) with ``prompt``, and that length;
        ``touch``: it counts as used (a look that restores nothing passes False)."""
        with self._lock:
            cands = [(k, self._entries[k].tokens) for k in self._index.candidates(prompt) if k in self._entries]
            got = _best(prompt, limit, cands, self.window)
            if got is None:
                return None
            if touch:
                self._entries.move_to_end(got[0])
            return self._entries[got[0]], got[1]

    def covers(self, tokens: Sequence[int]) -> bool:
        """Whether a snapshot holds ``tokens`` (or more after them)."""
        with self._lock:
            return any(_covers(self.window, self._entries[k].tokens, tokens)
                       for k in self._index.candidates(tokens) if k in self._entries)

    def put(self, snap: Snapshot) -> bool:
        """Keep ``snap`` (dropping the snapshots it extends), then evict the least recently used beyond the
        budget. False when it was not kept (larger than the whole budget, or of another identity)."""
        if snap.identity != self.identity or snap.nbytes > self.budget_bytes:
            return False
        with self._lock:
            for k in self._index.candidates(snap.tokens):
                old = self._entries.get(k)
                if old is not None and _covers(self.window, snap.tokens, old.tokens):
                    self._drop(k)  # superseded: the new one serves all it did
            key, self._next = self._next, self._next + 1
            self._entries[key] = snap
            self._index.add(key, snap.tokens)
            self.bytes += snap.nbytes
            self.counters.writes += 1
            while self.bytes > self.budget_bytes and self._entries:
                self._drop(next(iter(self._entries)))
                self.counters.evictions += 1
            return True

    def discard(self, snap: Snapshot) -> None:
        with self._lock:
            for k, s in list(self._entries.items()):
                if s is snap:
                    self._drop(k)

    def _drop(self, key: int) -> None:
        snap = self._entries.pop(key)
        self._index.remove(key)
        self.bytes -= snap.nbytes

    def describe(self) -> dict[str, int]:
        with self._lock:
            return {**self.counters.as_dict(), "bytes": self.bytes, "entries": len(self._entries),
                    "budget_bytes": self.budget_bytes}


# ------------------------------------------------------------------------------------------------ disk tier
_MAGIC = b"KRONKKV1"
_HEAD = struct.Struct("<8sI")  # magic, header length
_SUFFIX = ".kv"


@dataclass
class _DiskEntry:
    path: Path
    tokens: tuple[int, ...]
    exact: int
    size: int
    mtime: float = field(default=0.0)


class DiskPrefixCache:
    """Snapshots as files in ``root/<identity digest>/`` within ``budget_bytes`` (oldest out first).

    A file is written whole to a temporary name and renamed (a reader never sees half a file, a crash leaves
    none); its header holds the identity, the token count and a checksum of the tokens and the data, checked
    on every read. The folder may be shared by several replicas: files another one wrote are found by
    rescanning when the folder changed. Thread-safe."""

    def __init__(self, root: str | Path, budget_bytes: int, identity: Identity, window: Window | None = None):
        self.identity = identity.digest
        self.window = window or Window()
        self.dir = Path(root) / self.identity
        self.budget_bytes = budget_bytes
        self.counters = TierCounters()
        self._entries: dict[str, _DiskEntry] = {}
        self._index = _BlockIndex()
        self._lock = threading.Lock()
        self._scanned: float | None = None
        self.dir.mkdir(parents=True, exist_ok=True)
        ident = self.dir / "identity.json"
        if not ident.exists():
            _write_atomic(ident, json.dumps(identity.as_dict(), indent=1).encode())
        self.refresh()

    # -------------------------------------------------------------- reading
    def refresh(self) -> None:
        """Index the files in the folder, when it changed since the last look (another replica wrote one)."""
        try:
            mtime = self.dir.stat().st_mtime_ns
        except FileNotFoundError:
            self.dir.mkdir(parents=True, exist_ok=True)
            mtime = self.dir.stat().st_mtime_ns
        with self._lock:
            if self._scanned == mtime:
                return
            self._scanned = mtime
            seen = set()
            for p in self.dir.glob("*" + _SUFFIX):
                seen.add(p.name)
                if p.name in self._entries:
                    continue
                head = _read_header(p, self.identity)
                if head is None:
                    continue
                self._add(_DiskEntry(p, head[0], head[1]["exact"], p.stat().st_size, p.stat().st_mtime))
            for name in [n for n in self._entries if n not in seen]:
                self._remove(name)

    def best_match(self, prompt: Sequence[int], limit: int) -> int:
        """The longest prefix of ``prompt`` (at most ``limit``) a file holds, by the index alone (0: none)."""
        self.refresh()
        with self._lock:
            got = _best(prompt, limit, [(n, self._entries[n].tokens) for n in self._index.candidates(prompt)
                                        if n in self._entries], self.window)
        return got[1] if got else 0

    def load(self, prompt: Sequence[int], limit: int) -> tuple[Snapshot, int] | None:
        """The snapshot sharing the longest prefix with ``prompt``, read and verified (a file that fails its
        checks is deleted and the next best one tried), and that length."""
        self.refresh()
        while True:
            with self._lock:
                got = _best(prompt, limit, [(n, self._entries[n].tokens) for n in self._index.candidates(prompt)
                                            if n in self._entries], self.window)
                if got is None:
                    return None
                entry = self._entries[got[0]]
            snap = _read_snapshot(entry.path, self.identity)
            if snap is not None and common_prefix(snap.tokens, prompt, limit) == got[1]:
                try:
                    os.utime(entry.path)  # recently used: last to be evicted
                except OSError:
                    pass
                return snap, got[1]
            log.warning("prefix cache: %s failed its checks; deleting it", entry.path.name)
            with self._lock:
                self._remove(entry.path.name)
            entry.path.unlink(missing_ok=True)

    def holds(self, tokens: Sequence[int]) -> bool:
        """Whether a file holds exactly ``tokens`` (or more after them)."""
        with self._lock:
            return any(_covers(self.window, self._entries[n].tokens, tokens)
                       for n in self._index.candidates(tokens) if n in self._entries)

    # -------------------------------------------------------------- writing
    def write(self, snap: Snapshot) -> Path | None:
        """Store ``snap`` (atomically), delete the files it extends, then the oldest beyond the budget."""
        if snap.identity != self.identity or snap.nbytes > self.budget_bytes:
            return None
        tok = array("i", snap.tokens).tobytes()
        name = hashlib.blake2b(tok, digest_size=16).hexdigest() + _SUFFIX
        header = json.dumps({"identity": self.identity, "n_tokens": len(snap.tokens), "exact": snap.exact,
                             "data_bytes": len(snap.data), "checksum": _checksum(tok, snap.data),
                             "written": time.time()}).encode()
        path = self.dir / name
        _write_atomic(path, _HEAD.pack(_MAGIC, len(header)) + header + tok + snap.data)
        with self._lock:
            for n in self._index.candidates(snap.tokens):
                old = self._entries.get(n)
                if old is not None and n != name and _covers(self.window, snap.tokens, old.tokens):
                    self._remove(n)  # superseded: this file serves all it did
                    old.path.unlink(missing_ok=True)
                    self.counters.evictions += 1
            self._remove(name)
            st = path.stat()
            self._add(_DiskEntry(path, snap.tokens, snap.exact, st.st_size, st.st_mtime))
            self.counters.writes += 1
        self._evict()
        return path

    def _evict(self) -> None:
        """Delete the least recently used files (by their times) while the folder is over budget."""
        files = []
        for p in self.dir.glob("*" + _SUFFIX):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in files)
        for _, size, p in sorted(files, key=lambda f: f[0]):
            if total <= self.budget_bytes:
                break
            p.unlink(missing_ok=True)
            total -= size
            with self._lock:
                self._remove(p.name)
                self.counters.evictions += 1

    def _add(self, e: _DiskEntry) -> None:
        self._entries[e.path.name] = e
        self._index.add(e.path.name, e.tokens)

    def _remove(self, name: str) -> None:
        if self._entries.pop(name, None) is not None:
            self._index.remove(name)

    def describe(self) -> dict[str, int]:
        with self._lock:
            return {**self.counters.as_dict(), "bytes": sum(e.size for e in self._entries.values()),
                    "entries": len(self._entries), "budget_bytes": self.budget_bytes}


def _checksum(tokens: bytes, data: bytes | bytearray | memoryview) -> str:
    """SHA-256 of a file's tokens and data (hardware-accelerated on current CPUs: about 1 ms per MB here)."""
    h = hashlib.sha256(tokens)
    h.update(data)
    return h.hexdigest()


def _write_atomic(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with tmp.open("wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read_head(f: BinaryIO, identity: str) -> tuple[bytes, dict[str, Any]] | None:
    """A file's header and tokens (as stored), read from its start, when it is a snapshot of ``identity``."""
    magic, n = _HEAD.unpack(f.read(_HEAD.size))
    if magic != _MAGIC or n > 1 << 16:
        return None
    head = json.loads(f.read(n))
    if head.get("identity") != identity:
        return None
    tok = f.read(4 * int(head["n_tokens"]))
    return (tok, head) if len(tok) == 4 * int(head["n_tokens"]) else None


def _read_header(path: Path, identity: str) -> tuple[tuple[int, ...], dict[str, Any]] | None:
    """A file's tokens and header, when it is a snapshot of ``identity`` (else None): its data is not read."""
    try:
        with path.open("rb") as f:
            got = _read_head(f, identity)
        return (tuple(array("i", got[0])), got[1]) if got is not None else None
    except (OSError, ValueError, KeyError, struct.error):
        return None


def _read_snapshot(path: Path, identity: str) -> Snapshot | None:
    """The snapshot in ``path``, when its header, identity, sizes and checksum all hold (else None)."""
    try:
        with path.open("rb") as f:
            got = _read_head(f, identity)
            if got is None:
                return None
            tok, head = got
            data = f.read()
        if len(data) != int(head["data_bytes"]) or _checksum(tok, data) != head.get("checksum"):
            return None
        return Snapshot(tuple(array("i", tok)), int(head["exact"]), data, identity)
    except (OSError, ValueError, KeyError, struct.error):
        return None
