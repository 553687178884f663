"""How a batch's item streams are merged for delivery (kronk.serving.streams.merge_streams).

The requests' items come from scripted generators (each item after a fixed delay), so what is checked is the
delivery policy alone: items coalesce while they stream, a first item and an end never wait.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from kronk.serving.call import Call, Endpoint, RequestContext
from kronk.serving.items import Failure
from kronk.serving.streams import END, Pending, merge_streams

# (delay before the item in seconds, item); items are SSE text, merged by concatenation
A = [(0.0, "a1 "), (0.03, "a2 "), (0.03, "a3 "), (0.03, "a4 ")]
B = [(0.005, "b1 "), (0.03, "b2 "), (0.03, "b3 "), (0.25, "b4 ")]


async def scripted(script: list[tuple[float, str]]):
    for delay, item in script:
        await asyncio.sleep(delay)
        yield item


def pending(i: int) -> Pending:
    """A call whose request id is its index in the batch (the scripted runs below look it up)."""
    return Pending(Call(Endpoint.COMPLETIONS, None, RequestContext(str(i))))


def index(call: Call) -> int:
    return int(call.ctx.request_id)


async def deliveries(scripts: list[list[tuple[float, str]]], interval_s: float) -> list[tuple[float, list[Any]]]:
    reqs = [pending(i) for i in range(len(scripts))]
    t0 = time.perf_counter()
    out = []
    async for entries in merge_streams(reqs, lambda c: scripted(scripts[index(c)]), interval_s):
        out.append((time.perf_counter() - t0, entries))
    return out


def per_request(out: list[tuple[float, list[Any]]], i: int) -> list[tuple[float, Any]]:
    """(time, entry) of request i's deliveries up to and including its end."""
    got = []
    for t, entries in out:
        if entries[i] is not None:
            got.append((t, entries[i]))
            if entries[i] is END:
                break
    return got


def test_streams_coalesce_but_first_items_and_ends_go_at_once():
    out = asyncio.run(deliveries([A, B], interval_s=0.2))
    a, b = per_request(out, 0), per_request(out, 1)
    # everything arrives, in order, each request ended once
    assert "".join(x for _, x in a[:-1]) == "a1 a2 a3 a4 " and a[-1][1] is END
    assert "".join(x for _, x in b[:-1]) == "b1 b2 b3 b4 " and b[-1][1] is END
    # the first items go alone, though B's came 5 ms after A's was sent (the interval is 200 ms)
    assert a[0][1] == "a1 " and b[0][1] == "b1 "
    assert b[0][0] < 0.1
    # later items wait and cross together
    assert len(a) < len(A) + 1 and len(b) < len(B) + 1
    # A's end is not held for another interval after its last items, though B still runs
    assert a[-1][0] - a[-2][0] < 0.1
    assert a[-1][0] < b[-2][0]


def test_without_an_interval_every_item_goes_at_once():
    out = asyncio.run(deliveries([A, B], interval_s=0.0))
    a, b = per_request(out, 0), per_request(out, 1)
    assert [x for _, x in a] == [x for _, x in A] + [END]
    assert [x for _, x in b] == [x for _, x in B] + [END]


def test_a_failure_goes_alone_after_its_text_and_its_batch_mate_goes_on():
    failure = Failure(400, "invalid_request_error", "bad request")

    async def failing():
        yield "x1 "
        await asyncio.sleep(0.01)
        yield "x2 "
        yield failure  # a service ends a call that fails with one Failure item

    async def run() -> list[list[Any]]:
        reqs = [pending(0), pending(1)]
        gens = [failing(), scripted(A)]
        return [e async for e in merge_streams(reqs, lambda c: gens[index(c)], 0.05)]

    out = asyncio.run(run())
    first = [e[0] for e in out if e[0] is not None]
    assert first[0] == "x1 " and first[1] == "x2 " and first[2] is failure and first[-1] is END
    second = [e[1] for e in out if e[1] is not None]
    assert "".join(x for x in second if isinstance(x, str)) == "a1 a2 a3 a4 " and second[-1] is END
