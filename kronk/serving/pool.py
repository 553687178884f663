"""Models loaded on demand within a memory budget: the pool of one process.

Any installed model that is not pinned (given its own deployment in the config) is
served by a pool: its first request loads it, later ones reuse it, and it is
unloaded once idle for its keep-alive (Ollama's ``keep_alive``: a duration, ``0``
unloads right after the answer, ``-1`` keeps it). Loads fit a memory budget: the
estimate of a model (weights, KV cache, compute buffers; kronk.engine.memory) is
reserved before it loads, and idle models are evicted least recently used first to
make room. A model with a running or waiting request is never evicted: when nothing
can be evicted the request gets a 503 with Retry-After, never an out-of-memory crash.
Concurrent first requests for one model cause one load; the others wait for it.

The pool knows nothing of Ray: ``deployments/pool.py`` runs one in each pool replica
(routed to by Serve's model multiplexing), the one-model replica front runs one beside
its pinned model, and the one-process tests run one in-process. What loads a model and
what it costs are passed in (``loader``, ``estimator``), as blocking functions run in
threads.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from kronk.errors import EngineOverloaded, ErrorKind, KronkError, ModelNotFound, Pinned
from kronk.serving.call import Call
from kronk.serving.items import Failure, Item
from kronk.serving.replica import ModelReplica, replica_info
from kronk.serving.service import ModelService

log = logging.getLogger("kronk.serving.pool")

KEEP_FOREVER = math.inf
# Retry-After when a model cannot be loaded now because every loaded model is busy.
BUSY_RETRY_AFTER_S = 5.0
# How often idle models are checked against their keep-alive.
REAP_INTERVAL_S = 1.0
# State changes a pool keeps for readers in other processes (the routing ingress's event stream).
RECENT_EVENTS = 200


class ModelTooLarge(KronkError):
    """A model whose estimate exceeds the whole memory budget: it can never be loaded here."""

    kind = ErrorKind.INSUFFICIENT_STORAGE
    code = "insufficient_memory"


class NotInPool(KronkError):
    kind = ErrorKind.CONFLICT
    code = "model_not_loaded"


@dataclass
class PoolEntry:
    model: str
    state: str = "loading"  # loading | loaded | error
    bytes: int = 0  # the estimate reserved for it
    service: ModelService | None = None
    replica: ModelReplica | None = None
    active: int = 0  # requests running or waiting in it
    last_used: float = 0.0
    keep_alive_s: float = 0.0
    error: str | None = None
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    load_s: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # what was chosen for it (context, slots, KV type)

    def expired(self, now: float) -> bool:
        return (self.state == "loaded" and self.active == 0 and self.keep_alive_s != KEEP_FOREVER
                and now - self.last_used >= self.keep_alive_s)


@dataclass(frozen=True)
class LoadPlan:
    """What the estimator decided for a model: the bytes to reserve and the settings it will load with."""

    bytes: int
    settings: dict[str, Any] = field(default_factory=dict)


Loader = Callable[[str, LoadPlan], ModelService]
Estimator = Callable[[str, int], LoadPlan]  # (model, bytes free now) -> plan; raises KronkError if it cannot fit
EventSink = Callable[[dict[str, Any]], None]


class ModelPool:
    def __init__(self, loader: Loader, estimator: Estimator, budget_bytes: int, *, keep_alive_s: float = 300.0,
                 on_event: EventSink | None = None, replica: str = "local", close: Callable[[ModelService], None]
                 | None = None, clock: Callable[[], float] = time.monotonic):
        self.loader, self.estimator = loader, estimator
        self.budget_bytes = budget_bytes
        self.keep_alive_s = keep_alive_s
        self.replica = replica
        self._close = close or (lambda svc: svc.engine.close())
        self._on_event = on_event
        self._clock = clock
        self.entries: dict[str, PoolEntry] = {}
        self.failed: dict[str, str] = {}  # model -> why its last load failed (until one succeeds)
        self._room = asyncio.Lock()  # one load decision (estimate, evictions, reservation) at a time
        self._reaper: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()  # unloads and loads running in the background
        self.loads = 0  # loads started (each model's first request, or after an unload)
        self._listeners: list[asyncio.Queue[dict[str, Any]]] = []
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)  # for readers in other processes
        self._seq = 0

    # ------------------------------------------------------------------ requests
    async def stream(self, call: Call) -> AsyncIterator[Item]:
        """A call's items from its model, loaded first if it is not; errors as one Failure."""
        self._ensure_reaper()
        keep = _keep_alive_of(call.request)
        try:
            entry = await self._acquire(call.model)
        except Exception as e:  # no room, the load failed, the model is unknown
            yield Failure.of(e)
            return
        try:
            assert entry.replica is not None
            items = entry.replica.stream(call)
            try:
                async for item in items:
                    yield item
            finally:
                await items.aclose()
        finally:
            self._release(entry, keep)

    async def _acquire(self, model: str) -> PoolEntry:
        """The model's entry, loaded, with this request counted in it (so it is not evicted under it)."""
        while True:
            entry = self.entries.get(model)
            if entry is None:
                entry = await self._start_load(model)
            entry.active += 1
            if entry.state == "loading":
                try:
                    await entry.loaded.wait()
                except BaseException:
                    entry.active -= 1
                    raise
            if entry.state == "loaded":
                entry.last_used = self._clock()
                return entry
            entry.active -= 1
            if entry.state == "error":  # the load failed (its entry is gone: the next request tries again)
                raise _load_error(model, entry.error)
            # it was unloaded while this request waited for it: load it again

    def _release(self, entry: PoolEntry, keep_alive_s: float | None) -> None:
        entry.active -= 1
        entry.last_used = self._clock()
        if keep_alive_s is not None:
            entry.keep_alive_s = keep_alive_s
        if entry.active == 0 and entry.keep_alive_s == 0 and self.entries.get(entry.model) is entry:
            self._spawn(self._unload(entry, "keep_alive"))

    async def _start_load(self, model: str) -> PoolEntry:
        async with self._room:
            entry = self.entries.get(model)
            if entry is not None:  # another request started it while this one waited for the lock
                return entry
            plan = await asyncio.to_thread(self.estimator, model, self.budget_bytes)
            if plan.bytes > self.budget_bytes:
                raise ModelTooLarge(
                    f"{model} needs about {_gib(plan.bytes)} (weights, KV cache and buffers) and this server's "
                    f"model memory budget is {_gib(self.budget_bytes)}: it cannot be loaded here. Lower its "
                    "context size or parallel slots, use a smaller quantization, or raise the budget "
                    "(memory_budget_fraction).", param="model")
            await self._make_room(model, plan.bytes)
            entry = PoolEntry(model, bytes=plan.bytes, keep_alive_s=self.keep_alive_s, settings=plan.settings,
                              last_used=self._clock())
            self.entries[model] = entry
            self.loads += 1
        self._emit("loading", entry)
        self._spawn(self._load(entry, plan))
        return entry

    async def _make_room(self, model: str, need: int) -> None:
        """Evict idle models, least recently used first, until ``need`` bytes are free (else a 503)."""
        while self.used_bytes() + need > self.budget_bytes:
            idle = [e for e in self.entries.values() if e.state != "loading" and e.active == 0]
            if not idle:
                busy = ", ".join(sorted(e.model for e in self.entries.values())) or "none"
                raise EngineOverloaded(
                    f"no memory for {model} now: the loaded models ({busy}) are all busy and the model memory "
                    f"budget ({_gib(self.budget_bytes)}) holds no more. Retry after about "
                    f"{BUSY_RETRY_AFTER_S:.0f} s.", code="pool_busy", retry_after_s=BUSY_RETRY_AFTER_S)
            victim = min(idle, key=lambda e: e.last_used)
            await self._unload(victim, "evicted", for_model=model)

    async def _load(self, entry: PoolEntry, plan: LoadPlan) -> None:
        t0 = time.perf_counter()
        try:
            svc = await asyncio.to_thread(self.loader, entry.model, plan)
        except Exception as e:
            entry.state = "error"
            entry.error = e.message if isinstance(e, KronkError) else f"{type(e).__name__}: {e}"
            self.failed[entry.model] = entry.error
            log.error("model %s could not be loaded: %s", entry.model, entry.error)
            self._emit("error", entry, reason=entry.error)
        else:
            self.failed.pop(entry.model, None)
            entry.service, entry.replica = svc, ModelReplica(svc)
            entry.state, entry.load_s = "loaded", time.perf_counter() - t0
            log.info("model %s loaded in %.1fs (%s reserved)", entry.model, entry.load_s, _gib(entry.bytes))
            self._emit("loaded", entry, load_s=round(entry.load_s, 3))
        finally:
            entry.loaded.set()
            if entry.state == "error":
                self.entries.pop(entry.model, None)  # its reservation is free again

    async def _unload(self, entry: PoolEntry, why: str, for_model: str | None = None) -> None:
        if self.entries.get(entry.model) is not entry or entry.active or entry.state != "loaded":
            return
        del self.entries[entry.model]
        svc, entry.service, entry.replica = entry.service, None, None
        entry.state = "unloaded"
        if svc is not None:
            await asyncio.to_thread(self._close, svc)
        log.info("model %s unloaded (%s)", entry.model, why)
        extra = {"for_model": for_model} if for_model else {}
        self._emit("evicted" if why == "evicted" else "unloaded", entry, reason=why, **extra)

    # ------------------------------------------------------------------ management
    async def load(self, model: str, keep_alive_s: float | None = None) -> dict[str, Any]:
        """Load ``model`` now (a no-op when loaded); its state."""
        self._ensure_reaper()
        entry = await self._acquire(model)
        self._release(entry, keep_alive_s)
        return self.state_of(model)

    async def unload(self, model: str) -> dict[str, Any]:
        """Unload ``model`` once its running requests end (at once when idle)."""
        entry = self.entries.get(model)
        if entry is None:
            raise NotInPool(f"{model} is not loaded", param="model")
        if entry.state == "loading":
            await entry.loaded.wait()
        entry.keep_alive_s = 0.0  # unloaded when its last request ends
        if entry.active == 0:
            await self._unload(entry, "unload")
        return self.state_of(model)

    def used_bytes(self) -> int:
        return sum(e.bytes for e in self.entries.values())

    def state_of(self, model: str) -> dict[str, Any]:
        e = self.entries.get(model)
        if e is None and model in self.failed:
            return {"model": model, "state": "error", "replica": self.replica, "error": self.failed[model]}
        if e is None:
            return {"model": model, "state": "available", "replica": self.replica}
        out: dict[str, Any] = {"model": model, "state": e.state, "replica": self.replica, "bytes": e.bytes,
                               "active": e.active, "keep_alive_s": None if e.keep_alive_s == KEEP_FOREVER
                               else e.keep_alive_s, "settings": e.settings}
        if e.state == "loaded" and e.keep_alive_s != KEEP_FOREVER:
            out["expires_in_s"] = None if e.active else max(0.0, round(e.keep_alive_s - (self._clock()
                                                                                           - e.last_used), 1))
        if e.load_s is not None:
            out["load_s"] = round(e.load_s, 3)
        return out

    def states(self) -> list[dict[str, Any]]:
        return [self.state_of(m) for m in {**self.failed, **self.entries}]

    def snapshot(self) -> dict[str, Any]:
        """What other processes read of this pool (on the stats board): states, recent events, memory."""
        return {"replica": self.replica, "states": self.states(), "events": list(self.recent),
                "budget_bytes": self.budget_bytes, "used_bytes": self.used_bytes()}

    def services(self) -> dict[str, ModelService]:
        return {m: e.service for m, e in self.entries.items() if e.service is not None}

    async def infos(self) -> dict[str, dict[str, Any]]:
        return {m: replica_info(s) for m, s in self.services().items()}

    # ------------------------------------------------------------------ events
    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._listeners.append(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        if q in self._listeners:
            self._listeners.remove(q)

    def _emit(self, kind: str, entry: PoolEntry, **extra: Any) -> None:
        self._seq += 1
        event = {"type": kind, "model": entry.model, "replica": self.replica, "seq": self._seq, "at": time.time(),
                 "bytes": entry.bytes, **extra}
        self.recent.append(event)
        for q in list(self._listeners):
            if q.full():  # a listener that stopped reading loses its oldest event, never blocks the pool
                q.get_nowait()
            q.put_nowait(event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # a sink that fails never fails a load
                log.warning("could not publish the pool event %s", event, exc_info=True)

    # ------------------------------------------------------------------ keep-alive
    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            now = self._clock()
            for entry in [e for e in self.entries.values() if e.expired(now)]:
                await self._unload(entry, "keep_alive")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for entry in list(self.entries.values()):
            if entry.state == "loading":
                await entry.loaded.wait()
            if entry.service is not None:
                await asyncio.to_thread(self._close, entry.service)
        self.entries.clear()


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_DURATION_CHARS = 64


def parse_duration(v: float | int | str) -> float:
    """Seconds of a keep-alive: a number of seconds, or a Go-style duration as Ollama takes them ("5m", "1h30m",
    "250ms", "-1m"); negative means forever (:data:`KEEP_FOREVER`). ValueError on anything else."""
    if isinstance(v, bool):
        raise ValueError("keep_alive must be a number of seconds or a duration such as \"5m\"")
    if isinstance(v, int | float):
        seconds = float(v)
    else:
        text = v.strip()
        if len(text) > MAX_DURATION_CHARS:
            raise ValueError(f"keep_alive has at most {MAX_DURATION_CHARS} characters")
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        try:
            seconds = sign * float(body)
        except ValueError:
            parts = _DURATION_PART.findall(body)
            if not body or "".join(n + u for n, u in parts) != body:
                raise ValueError(f"keep_alive {v!r} is not a number of seconds or a duration such as \"5m\", "
                                 "\"1h30m\" or \"-1\"") from None
            seconds = sign * sum(float(n) * _UNIT_S[u] for n, u in parts)
    if not math.isfinite(seconds):
        raise ValueError("keep_alive must be finite")
    return KEEP_FOREVER if seconds < 0 else seconds


def _keep_alive_of(request: Any) -> float | None:
    """A request's keep_alive, in seconds: its schema parsed it (parse_duration)."""
    return getattr(request, "keep_alive", None)


def not_for_pool(model: str, pinned: bool) -> KronkError:
    """Why a load/unload of ``model`` is refused: the config pins it, or (``pinned`` false) there is no pool."""
    if pinned:
        return Pinned(f"{model} is pinned by the server's config (its own deployment): it is always loaded",
                      param="model")
    return ModelNotFound(f"The model '{model}' is not served (the model pool is off).", param="model")


def _load_error(model: str, reason: str | None) -> KronkError:
    return EngineOverloaded(f"model {model} could not be loaded: {reason}", code="model_unavailable",
                            retry_after_s=BUSY_RETRY_AFTER_S)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
