"""The keys file: API keys with scopes and rate limits, stored as salted hashes under the kronk home.

``<home>/keys.json`` (mode 0600) holds one record per key: its name, a salted scrypt hash (never the key),
its scopes (``admin`` or none), an optional ``rpm`` (requests per minute), when it was made and a short
fingerprint (the first 8 hex digits of the key's sha256, shown in listings and used to find a key's record
without hashing against every record). Writes are atomic (temp file, fsync, rename) under a file lock, since
the CLI (``kronk key``) and the server (the local admin key) may both write it.

The *local admin key* (``<home>/local-admin.key``, mode 0600) lets the ``kronk`` CLI on the same machine reach
a keyed server with no typing: the server writes it at start when keys are on and registers it here; the CLI
reads it. It does not by itself turn keys on: keys are on when the ``api_keys`` setting or a key made with
``kronk key create`` exists (:meth:`KeySet.keys_on`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

log = logging.getLogger("kronk.security")

KEYS_FILE = "keys.json"
LOCAL_ADMIN_FILE = "local-admin.key"
LOCAL_ADMIN_NAME = "local-admin"
KEY_PREFIX = "kronk-"
ADMIN = "admin"
SCOPES = (ADMIN,)
# scrypt: 16 MiB and some tens of ms per hash; a verified key is then cached by its sha256 (see Access).
SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_VERSION = 1


class KeyFileError(Exception):
    """The keys file cannot be read or changed (message for people; never holds a key)."""


def new_key() -> str:
    """``kronk-`` + 32 url-safe random characters (192 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(24)


def digest(key: bytes | str) -> bytes:
    """sha256 of the key's bytes (UTF-8 for text): the cache index and the fingerprint's source."""
    return hashlib.sha256(key.encode("utf-8") if isinstance(key, str) else key).digest()


def fingerprint(key: bytes | str) -> str:
    """The first 8 hex digits of the key's sha256 (shown in `kronk key list`; not enough to guess the key)."""
    return digest(key).hex()[:8]


def _scrypt(key: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(key, salt=salt, n=n, r=r, p=p, maxmem=256 * r * n, dklen=32)


@dataclass(frozen=True)
class KeyRecord:
    name: str
    fingerprint: str
    salt: str  # hex
    hash: str  # hex of scrypt(key, salt)
    scopes: tuple[str, ...] = ()
    rpm: int | None = None
    created: str = ""
    local: bool = False  # the local admin key (does not turn keys on by itself)
    kdf: dict[str, int] = field(default_factory=lambda: dict(SCRYPT))

    @property
    def admin(self) -> bool:
        return ADMIN in self.scopes

    @classmethod
    def make(cls, key: str, name: str, *, admin: bool = False, rpm: int | None = None, local: bool = False,
             ) -> KeyRecord:
        salt = secrets.token_bytes(16)
        raw = key.encode("utf-8")
        return cls(name=name, fingerprint=fingerprint(raw), salt=salt.hex(), hash=_scrypt(raw, salt, **SCRYPT).hex(),
                   scopes=(ADMIN,) if admin else (), rpm=rpm,
                   created=datetime.now(UTC).isoformat(timespec="seconds"), local=local)

    def matches(self, key: bytes) -> bool:
        """Whether ``key`` (the bytes a client sent) is this record's key (constant-time comparison)."""
        try:
            got = _scrypt(key, bytes.fromhex(self.salt), **self.kdf)
            return hmac.compare_digest(got, bytes.fromhex(self.hash))
        except (ValueError, TypeError, MemoryError):  # a damaged record never matches
            return False

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["scopes"] = list(self.scopes)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KeyRecord:
        rpm = d.get("rpm")
        return cls(name=str(d["name"]), fingerprint=str(d["fingerprint"]), salt=str(d["salt"]), hash=str(d["hash"]),
                   scopes=tuple(str(s) for s in d.get("scopes") or ()), rpm=int(rpm) if rpm else None,
                   created=str(d.get("created") or ""), local=bool(d.get("local", False)),
                   kdf={k: int(v) for k, v in (d.get("kdf") or SCRYPT).items()})

    def public(self) -> dict[str, Any]:
        """What listings show: never the hash or the salt."""
        return {"name": self.name, "fingerprint": self.fingerprint, "scopes": list(self.scopes), "rpm": self.rpm,
                "created": self.created, "local": self.local}


@dataclass(frozen=True)
class KeySet:
    """The records of one reading of the keys file."""

    records: tuple[KeyRecord, ...] = ()

    @property
    def keys_on(self) -> bool:
        """A key other than the local admin key exists (the local one alone leaves keys off)."""
        return any(not r.local for r in self.records)

    def candidates(self, key_digest: bytes) -> list[KeyRecord]:
        fp = key_digest.hex()[:8]
        return [r for r in self.records if r.fingerprint == fp]


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600: temp file, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)  # whatever the umask
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class KeyStore:
    """The keys file of one kronk home (reading, and changing it under its lock)."""

    def __init__(self, home: Path | str):
        self.home = Path(home)
        self.path = self.home / KEYS_FILE
        self.local_key_path = self.home / LOCAL_ADMIN_FILE

    # ---- reading
    def stamp(self) -> tuple[int, int, int] | None:
        """What changes when the file does (mtime, size, inode), or None when there is no file."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load(self) -> KeySet:
        """The file's records (none when it does not exist); KeyFileError when it cannot be read."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return KeySet()
        except OSError as e:
            raise KeyFileError(f"cannot read the keys file {self.path}: {e.strerror or e}") from None
        try:
            data = json.loads(text) if text.strip() else {"keys": []}
            return KeySet(tuple(KeyRecord.from_json(d) for d in data.get("keys", [])))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise KeyFileError(f"the keys file {self.path} is damaged ({type(e).__name__}); fix or remove it "
                               "(and create keys again with `kronk key create`)") from None

    def list(self) -> list[KeyRecord]:
        return list(self.load().records)

    # ---- changing
    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[KeyRecord]]:
        """The records, under the file lock; what the block leaves in the list is written back (atomically)."""
        self.home.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.home / (KEYS_FILE + ".lock")), timeout=30):
            records = list(self.load().records)
            before = list(records)
            yield records
            if records != before:
                _write_private(self.path, json.dumps(
                    {"version": _VERSION, "keys": [r.to_json() for r in records]}, indent=2) + "\n")

    def create(self, *, name: str | None = None, admin: bool = False, rpm: int | None = None) -> tuple[str, KeyRecord]:
        """A new key (returned once: only its hash is stored) and its record."""
        if rpm is not None and rpm < 1:
            raise KeyFileError("--rpm must be at least 1 (leave it out for no limit)")
        key = new_key()
        with self._locked() as records:
            name = name or f"key-{fingerprint(key)}"
            if name == LOCAL_ADMIN_NAME:
                raise KeyFileError(f"the name {LOCAL_ADMIN_NAME!r} is kept for the local admin key; pick another")
            if any(r.name == name for r in records):
                raise KeyFileError(f"a key named {name!r} exists already; pick another --name (see `kronk key list`)")
            rec = KeyRecord.make(key, name, admin=admin, rpm=rpm)
            records.append(rec)
        return key, rec

    def revoke(self, name_or_fingerprint: str) -> KeyRecord:
        """Remove the key with that name (or fingerprint); KeyFileError if none (or several) match."""
        with self._locked() as records:
            hits = [r for r in records if r.name == name_or_fingerprint] or [
                r for r in records if r.fingerprint == name_or_fingerprint.lower()]
            if not hits:
                raise KeyFileError(f"no key named {name_or_fingerprint!r} or with that fingerprint; see "
                                   "`kronk key list`")
            if len(hits) > 1:
                raise KeyFileError(f"{len(hits)} keys have the fingerprint {name_or_fingerprint!r}; revoke by name")
            records.remove(hits[0])
        return hits[0]

    # ---- the local admin key
    def read_local_admin_key(self) -> str | None:
        try:
            key = self.local_key_path.read_text().strip()
        except OSError:
            return None
        return key or None

    def ensure_local_admin_key(self) -> str:
        """The local admin key: made once (``<home>/local-admin.key``, mode 0600) and registered in the keys
        file; reused (and registered again if its record was revoked) afterwards."""
        with self._locked() as records:
            key = self.read_local_admin_key()
            if key is None:
                key = new_key()
                _write_private(self.local_key_path, key + "\n")
            raw = key.encode("utf-8")
            if not any(r.local and r.fingerprint == fingerprint(raw) and r.matches(raw) for r in records):
                records[:] = [r for r in records if not r.local]
                records.append(KeyRecord.make(key, LOCAL_ADMIN_NAME, admin=True, local=True))
        return key


def keys_configured(settings: Any) -> bool:
    """Whether keys are on for these settings: the ``api_keys`` setting, or a key in the home's keys file
    (KeyFileError when that file is damaged)."""
    return bool([k for k in settings.api_keys if k.get_secret_value()]) or KeyStore(settings.home).load().keys_on


class KeyFileWatcher:
    """The keys file as the server sees it: reread when it changes, checked at most once per ``interval_s``."""

    def __init__(self, store: KeyStore, interval_s: float = 1.0, clock: Any = time.monotonic):
        self.store = store
        self.interval_s = interval_s
        self.clock = clock
        self._checked = -float("inf")
        self._stamp: tuple[int, int, int] | bool | None = False  # False: never read
        self._keys = KeySet()
        self.generation = 0  # bumped at each reload (the verified-key cache follows it)

    def current(self) -> KeySet:
        now = self.clock()
        if now - self._checked < self.interval_s:
            return self._keys
        self._checked = now
        stamp = self.store.stamp()
        if stamp == self._stamp:
            return self._keys
        try:
            keys = self.store.load()
        except KeyFileError as e:
            # keep what was in force (dropping every key would open the server); on a first read, fail closed
            log.error("%s; keeping the keys read before", e)
            if self._stamp is False:
                keys = KeySet((KeyRecord(name="<unreadable keys file>", fingerprint="-", salt="", hash=""),))
            else:
                keys = self._keys
        self._stamp, self._keys = stamp, keys
        self.generation += 1
        return keys
