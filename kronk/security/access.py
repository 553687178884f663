"""Who may use the server: API keys (from the ``api_keys`` setting and the keys file), their scopes and rate
limits, and, with no keys, the Host/Origin check that keeps web pages (DNS rebinding, ``no-cors`` posts) out.

One :class:`Access` per app, built from Settings (:meth:`Access.from_settings`); the middleware in
kronk/security/auth.py asks it about every request.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kronk.security.keys import KeyFileWatcher, KeyRecord, KeyStore, digest
from kronk.security.ratelimit import RateLimiter

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: a key's name and scopes, or ``anonymous`` when keys are off (then every route is
    open, behind the Host/Origin check)."""

    name: str
    admin: bool
    fingerprint: str | None = None
    rpm: int | None = None
    anonymous: bool = False


ANONYMOUS = Principal("anonymous", admin=True, anonymous=True)


def host_name(host: str) -> str:
    """A Host header's (or URL netloc's) name without its port, lower case; IPv6 stays bracketed."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    if host.count(":") > 1:  # a bare IPv6 address (not valid in a Host header, but be exact)
        return f"[{host}]"
    return host.rpartition(":")[0] if ":" in host else host


def origin_host(origin: str) -> str | None:
    """The host name of an ``Origin`` header (None for ``null`` or anything that is not a URL)."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return host_name(parts.netloc.rpartition("@")[2])


class Access:
    """The security decisions of one app (one process)."""

    def __init__(self, *, api_keys: Iterable[str] = (), home: Path | str | None = None,
                 allowed_hosts: Iterable[str] = (), clock: Any = None, reload_interval_s: float = 1.0):
        # keys from the setting: compared by their sha256 (constant length, constant time, as bytes)
        self._setting_keys = [(digest(k), Principal(f"api_keys[{i}]", admin=True))
                              for i, k in enumerate(k for k in api_keys if k)]
        self.allowed_hosts = frozenset(host_name(h) if h != "*" else "*" for h in allowed_hosts if h)
        self.store = KeyStore(home) if home is not None else None
        kw = {"clock": clock} if clock is not None else {}
        self.watcher = KeyFileWatcher(self.store, reload_interval_s, **kw) if self.store is not None else None
        self.limiter = RateLimiter(**kw)
        # sha256(key) -> (its record, who): scrypt once per key; on a reload, entries whose record is gone or
        # changed are dropped
        self._verified: dict[bytes, tuple[KeyRecord, Principal]] = {}
        self._generation = -1

    @classmethod
    def from_settings(cls, settings: Any, **kw: Any) -> Access:
        """Keys from ``api_keys`` and ``<home>/keys.json``; ``allowed_hosts`` for the no-key Host check."""
        return cls(api_keys=[k.get_secret_value() for k in settings.api_keys], home=settings.home,
                   allowed_hosts=settings.allowed_hosts, **kw)

    # ---- keys
    def _file_keys(self) -> tuple[bool, list[KeyRecord]]:
        if self.watcher is None:
            return False, []
        keys = self.watcher.current()
        if self.watcher.generation != self._generation:
            self._generation = self.watcher.generation
            records = list(keys.records)
            self._verified = {d: v for d, v in self._verified.items() if v[0] in records}
            self.limiter.forget({r.fingerprint + r.name for r in keys.records} | {"setting"})
        return keys.keys_on, list(keys.records)

    def keys_on(self) -> bool:
        return bool(self._setting_keys) or self._file_keys()[0]

    async def authenticate(self, presented: bytes) -> Principal | None:
        """Who the key (the bytes a client sent) belongs to, or None when it is no key of ours."""
        d = digest(presented)
        found = None
        for k, who in self._setting_keys:  # look at every one: the time does not say which matched
            if hmac.compare_digest(d, k):
                found = who
        if found is not None:
            return found
        self._file_keys()
        if d in self._verified:
            return self._verified[d][1]
        generation = self._generation
        for rec in self.watcher.current().candidates(d) if self.watcher is not None else ():
            # scrypt takes tens of ms: off the event loop (the replica's loop runs the batching)
            if await asyncio.to_thread(rec.matches, presented):
                who = Principal(rec.name, admin=rec.admin, fingerprint=rec.fingerprint, rpm=rec.rpm)
                if generation == self._generation:
                    self._verified[d] = (rec, who)
                return who
        return None

    def retry_after(self, who: Principal) -> int:
        """0 when ``who`` may make this request now (it is counted), else the seconds to wait."""
        if not who.rpm:
            return 0
        return self.limiter.hit((who.fingerprint or "") + who.name, who.rpm)

    # ---- hosts
    def host_allowed(self, name: str) -> bool:
        return name in LOOPBACK_HOSTS or "*" in self.allowed_hosts or name in self.allowed_hosts
