"""Admission of calls into a model and the one place their items are coalesced.

A model's calls are admitted in batches (Serve's ``@serve.batch`` in a replica,
or one call at a time in-process): :func:`merge_streams` runs every call of a
batch at once and delivers, per call, what it produced since the last delivery.
Strings of SSE events are joined; a dict (a whole JSON answer) or a
:class:`~kronk.serving.items.Failure` goes alone. Deliveries are held back to
cross a handle hop together at most every ``interval_s``, except a call's first
item and its end, which go at once (time to first token; the end of a call whose
batch-mates still run). With no hop to save (in-process, or a replica that takes
HTTP itself) the interval is 0 and every item goes at once.

:func:`admitted` is one caller's side: it reads its entries, and when the caller
goes away it cancels the call (the engine frees its slot at its next step) and
reads the batch stream to its end.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from kronk.serving.call import Call
from kronk.serving.items import Item

END = StopIteration  # a call's entry once it ended (what @serve.batch reads as "this caller's stream is over")

Run = Callable[[Call], AsyncIterator[Item]]
Batched = Callable[["Pending"], AsyncIterator[Any]]


@dataclass
class Pending:
    """One admitted call inside a batch."""

    call: Call
    cancelled: bool = False
    done: bool = False
    sent: bool = False  # an item went to the caller
    task: asyncio.Task | None = None
    queue: collections.deque = field(default_factory=collections.deque)


def _take(q: collections.deque) -> Any:
    """The next entry from a call's queue: its strings joined, or one dict / Failure, or END; None if empty."""
    if not q:
        return None
    if not isinstance(q[0], str):
        return q.popleft()
    parts = []
    while q and isinstance(q[0], str):
        parts.append(q.popleft())
    return "".join(parts)


async def merge_streams(reqs: list[Pending], run: Run, interval_s: float) -> AsyncIterator[list[Any]]:
    """Run every call of a batch at once (``run(call)``: its items) and yield one list per delivery, an entry
    per call: its items since the last delivery (coalesced by :func:`_take`), None for none, END once it ended."""
    ready: asyncio.Queue[int] = asyncio.Queue()
    tasks = [asyncio.create_task(_pump(run(r.call), r, ready)) for r in reqs]
    for r, t in zip(reqs, tasks, strict=True):
        r.task = t
    last_yield = 0.0
    try:
        while not all(r.cancelled or (r.done and not r.queue) for r in reqs):
            await ready.get()
            # a first item, or what is left of a call that ended (its end among it), goes at once
            urgent = any((r.done or not r.sent) and not r.cancelled and r.queue for r in reqs)
            wait = interval_s - (time.perf_counter() - last_yield)
            if wait > 0 and not urgent:
                await asyncio.sleep(wait)
            while not ready.empty():
                ready.get_nowait()
            out: list[Any] = []
            for r in reqs:
                if r.cancelled:  # the caller went away: end its stream now, nobody reads the rest
                    out.append(END)
                    continue
                entry = _take(r.queue)
                if entry is not None and entry is not END:
                    r.sent = True
                    if r.queue:  # one entry per delivery: what is left (its end, say) goes next, at once
                        ready.put_nowait(1)
                out.append(entry)
            last_yield = time.perf_counter()
            yield out
    finally:
        for t in tasks:
            t.cancel()


async def _pump(items: AsyncIterator[Item], r: Pending, ready: asyncio.Queue) -> None:
    try:
        async for item in items:
            if r.cancelled:  # a caller that went away (client disconnect) stops its generation
                break
            r.queue.append(item)
            ready.put_nowait(1)
    finally:
        await items.aclose()
        r.done = True
        r.queue.append(END)
        ready.put_nowait(1)


async def admitted(call: Call, batched: Batched) -> AsyncIterator[Item]:
    """One caller's items: ``batched(pending)`` yields its entries (None: nothing yet) until its stream ends."""
    req = Pending(call)
    stream = batched(req)
    ended = False
    try:
        async for entry in stream:
            if entry is not None:
                yield entry
        ended = True
    finally:
        req.cancelled = True
        if req.task is not None and not req.done:
            req.task.cancel()  # frees the engine slot now, even while the call waits for one
        if not ended:
            await _drain(stream)


def alone(run: Run, interval_s: float = 0.0) -> Batched:
    """A batcher that admits each call on its own (in-process: nothing arrives together over a hop)."""

    async def batched(req: Pending) -> AsyncIterator[Any]:
        async for out in merge_streams([req], run, interval_s):
            if out[0] is END:
                return
            yield out[0]

    return batched


async def _drain(stream: AsyncIterator[Any], timeout_s: float = 5.0) -> None:
    """Read a caller's batch stream to its end (arriving within one interval once the call is cancelled): a
    caller that stops after its last item would otherwise leave Serve's end-of-stream future unread, which
    asyncio reports as "Future exception was never retrieved"."""

    async def rest() -> None:
        async for _ in stream:
            pass

    try:
        await asyncio.wait_for(rest(), timeout_s)
    except Exception:  # a failed or slow end: nothing left to deliver to this caller
        pass
