"""Admission control and faults in one process, on the real default model (Gemma 3 270M).

The engine's wait queue is bounded (``max_queued`` requests beyond the running ones, ``queue_timeout_s`` the
longest wait): a request beyond it ends with EngineOverloaded, a 503 with Retry-After, before anything else, so
it is never cut later nor waits without bound. A request that cannot start (its sampler chain, grammar...) ends
alone and every other stream runs on. Serve's own queue (BackPressureError) and a dead replica reach the client
through ServeBackend as the same kind of 503 (tested here with a stand-in handle; test_faults.py with Ray).
"""

from __future__ import annotations

import asyncio
import json
import pickle
import time
from typing import Any

import httpx
import pytest

import kronk.engine.engine as engine_module
from kronk.api.app import create_app
from kronk.api.families import HANDLERS
from kronk.engine import EngineConfig, GenerationRequest, SamplingParams
from kronk.engine.engine import LlamaEngine
from kronk.errors import EngineError, EngineOverloaded
from kronk.serving.items import Failure
from kronk.serving.local import LocalBackend
from kronk.serving.service import ModelService
from kronk.settings import DEFAULT_MODEL, ModelConfig, Settings
from tests.helpers import GEMMA, http_server
from tests.models import gemma_path

PROMPT = "Write a long story about the sea:"
BROKEN_SEED = 4242  # the sampler chain of a request with this seed fails to build (see broken_sampler)


def make_engine(**cfg: Any) -> LlamaEngine:
    # one thread: llama.cpp's spinning threads slow down badly on a machine busy with other work
    return LlamaEngine(EngineConfig(batch_invariant=True,
                                    model_path=gemma_path(), name=GEMMA, ctx_size=1024, chat_template="gemma",
                                    threads=1, **cfg))


@pytest.fixture
def engine2():
    """Two slots, at most two requests waiting."""
    e = make_engine(parallel=2, max_queued=2)
    yield e
    e.close()


def request(engine: LlamaEngine, n: int, seed: int | None = None) -> GenerationRequest:
    return GenerationRequest(prompt=engine.tokenize(PROMPT), max_tokens=n, ignore_eos=True,
                             sampling=SamplingParams(temperature=0.0, seed=seed))


async def tokens_of(engine: LlamaEngine, req: GenerationRequest, started: asyncio.Event | None = None) -> list[int]:
    out: list[int] = []
    async for c in engine.generate(req):
        out += c.token_ids
        if started is not None and out:
            started.set()
    return out


async def until_idle(engine: LlamaEngine) -> bool:
    while engine.stats().active or engine.stats().waiting:
        await asyncio.sleep(0.02)
    return True


async def outcome(engine: LlamaEngine, req: GenerationRequest) -> list[int] | BaseException:
    try:
        return await tokens_of(engine, req)
    except EngineOverloaded as e:
        return e


# ---------------------------------------------------------------------------------------------- the engine queue
async def test_requests_beyond_the_queue_are_shed_at_once_and_the_others_complete(engine2):
    # 6 at once on 2 slots with max_queued 2: 2 run, 2 wait, the 2 newest are turned away before any token
    results = await asyncio.wait_for(asyncio.gather(*[outcome(engine2, request(engine2, 24)) for _ in range(6)]),
                                     300)
    done = [r for r in results if isinstance(r, list)]
    shed = [r for r in results if isinstance(r, EngineOverloaded)]
    assert len(done) == 4 and len(shed) == 2, results
    assert all(len(r) == 24 for r in done)
    assert results[4:] == shed  # the newest ones
    for e in shed:
        f = Failure.of(e)
        assert (f.status, f.type, f.code) == (503, "server_error", "overloaded")
        assert f.retry_after_s is not None and 1 <= f.retry_after_s <= 60
        assert f.headers() == {"Retry-After": str(int(f.retry_after_s))}
        assert "max_queued=2" in f.message and f"Retry after about {f.retry_after_s:.0f} s" in f.message
    assert engine2.stats().waiting == 0


async def test_a_request_that_waits_longer_than_queue_timeout_gets_a_503():
    engine = make_engine(parallel=1, max_queued=8, queue_timeout_s=0.5)
    try:
        started = asyncio.Event()
        long = asyncio.create_task(tokens_of(engine, request(engine, 400), started))
        await asyncio.wait_for(started.wait(), 300)
        t0 = time.monotonic()
        with pytest.raises(EngineOverloaded) as info:
            await asyncio.wait_for(tokens_of(engine, request(engine, 8)), 60)
        waited = time.monotonic() - t0
        assert 0.5 <= waited < 30, waited
        assert not long.done(), "the running request must not be disturbed (make it longer)"
        f = Failure.of(info.value)
        assert (f.status, f.code) == (503, "queue_timeout") and f.retry_after_s >= 1
        assert "queue_timeout_s=0.5" in f.message and "Retry after about" in f.message
        long.cancel()  # the client goes away: its slot frees at the next step
        with pytest.raises(asyncio.CancelledError):
            await long
        assert await asyncio.wait_for(until_idle(engine), 30)
    finally:
        engine.close()


# ------------------------------------------------------------------------------------- a request that cannot start
@pytest.fixture
def broken_sampler(monkeypatch):
    """SamplerChain fails to build (a plain exception, not a KronkError) for requests seeded BROKEN_SEED."""
    real = engine_module.SamplerChain

    def chain(vocab, n_vocab, sampling, **kw):
        if sampling.seed == BROKEN_SEED:
            raise RuntimeError("the sampler chain broke")
        return real(vocab, n_vocab, sampling, **kw)

    monkeypatch.setattr(engine_module, "SamplerChain", chain)


async def test_a_request_that_cannot_start_fails_alone_and_the_others_stream_on(engine2, broken_sampler):
    alone = await asyncio.wait_for(tokens_of(engine2, request(engine2, 48)), 300)
    started = asyncio.Event()
    running = asyncio.create_task(tokens_of(engine2, request(engine2, 48), started))
    await asyncio.wait_for(started.wait(), 300)
    with pytest.raises(EngineError) as info:
        await asyncio.wait_for(tokens_of(engine2, request(engine2, 8, seed=BROKEN_SEED)), 60)
    assert "could not start the request: the sampler chain broke" in info.value.message
    assert Failure.of(info.value).status == 500 and info.value.code == "engine_error"
    assert await asyncio.wait_for(running, 300) == alone  # untouched: same tokens as alone
    # the engine goes on: no slot was left taken, and the next request runs
    assert len(await asyncio.wait_for(tokens_of(engine2, request(engine2, 8)), 300)) == 8
    assert engine2.stats().active == 0 and engine2.stats().waiting == 0


# ------------------------------------------------------------------------------------- 48 streams over HTTP
async def _stream(client: httpx.AsyncClient, url: str, i: int) -> dict[str, Any]:
    body = {"model": GEMMA, "prompt": f"Story {i}: once upon a time", "max_tokens": 16, "temperature": 0,
            "ignore_eos": True, "stream": True}
    t0 = time.monotonic()
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        res: dict[str, Any] = {"status": r.status_code, "headers": r.headers}
        if r.status_code != 200:
            res["body"] = json.loads(await r.aread())
            res["wait_s"] = time.monotonic() - t0
            return res
        events, done = [], False
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                if not events:
                    res["wait_s"] = time.monotonic() - t0  # to the first token: the time it waited for a slot
                events.append(json.loads(line[6:]))
        res.update(events=events, done=done)
        return res


def run_streams(url: str, n: int) -> list[dict[str, Any]]:
    async def main() -> list[dict[str, Any]]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(timeout=httpx.Timeout(180), limits=limits) as client:
            return await asyncio.wait_for(asyncio.gather(*[_stream(client, url, i) for i in range(n)]), 300)

    return asyncio.run(main())


def check_outcomes(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Every request completed (200, its tokens, finish_reason, [DONE]) or was shed (503 with Retry-After and the
    envelope, code ``overloaded``: the queue was full, or ``queue_timeout``: it waited longer than
    queue_timeout_s); none cut, none other. The counts, and the longest wait (to the first token, or the 503)."""
    out: dict[str, Any] = {"completed": 0, "overloaded": 0, "queue_timeout": 0}
    for r in results:
        if r["status"] == 200:
            assert r["done"] and "error" not in r["events"][-1], r["events"][-1:]  # not cut
            assert r["events"][-1]["choices"][0]["finish_reason"] == "length"
            out["completed"] += 1
        else:
            err = r["body"]["error"]
            assert r["status"] == 503 and err["type"] == "server_error", r
            assert err["code"] in ("overloaded", "queue_timeout"), r
            assert int(r["headers"]["retry-after"]) >= 1 and "Retry after about" in err["message"]
            out[err["code"]] += 1
    out["longest_wait_s"] = round(max(r["wait_s"] for r in results), 2)
    return out


@pytest.mark.parametrize("max_queued", [64, 8])
def test_48_concurrent_streams_on_4_slots_complete_or_get_a_503(tmp_path, max_queued):
    engine = make_engine(parallel=4, max_queued=max_queued)  # queue_timeout_s: the default, 120 s
    try:
        backend = LocalBackend.of_services({GEMMA: ModelService(engine, GEMMA, HANDLERS)}, Settings(home=tmp_path))
        with http_server(create_app(backend)) as url:
            t0 = time.monotonic()
            results = run_streams(url, 48)
            elapsed = time.monotonic() - t0
        seen = check_outcomes(results)
        print(f"\n48 streams, 4 slots, max_queued={max_queued}: {seen}, all done in {elapsed:.1f} s")
        assert seen["completed"] + seen["overloaded"] + seen["queue_timeout"] == 48
        # the first 4 + max_queued to arrive are never turned away for a full queue (on a slow enough machine
        # some may wait past queue_timeout_s: that 503 is right too)
        assert seen["overloaded"] <= max(0, 48 - 4 - max_queued)
        if max_queued < 44:
            assert seen["overloaded"] > 0
        assert engine.stats().active == 0 and engine.stats().waiting == 0
    finally:
        engine.close()


# ------------------------------------------------------------------------------------- errors carry Retry-After
def test_retry_after_survives_pickling_and_becomes_the_header():
    e = pickle.loads(pickle.dumps(EngineOverloaded("busy", retry_after_s=2.5, code="queue_timeout")))
    assert (e.message, e.code, e.retry_after_s) == ("busy", "queue_timeout", 2.5)
    f = pickle.loads(pickle.dumps(Failure.of(e)))
    assert f.retry_after_s == 2.5 and f.headers() == {"Retry-After": "3"}
    assert Failure.of(EngineError("x")).headers() is None


def test_serve_deployments_bound_their_own_queue_with_a_retry_after():
    from deployments.llm import BACKPRESSURE_RETRY_AFTER_S, deployment_options

    settings = Settings(models=[ModelConfig(name="m"), ModelConfig(name="q", max_queued=0, queue_timeout_s=5)])
    opts = deployment_options(settings.resolved_model("m"))
    assert opts["max_queued_requests"] == 64
    assert opts["backpressure_config"].retry_after_s == BACKPRESSURE_RETRY_AFTER_S
    q = settings.resolved_model("q")
    assert deployment_options(q)["max_queued_requests"] == 1  # Serve has no 0
    from kronk.engine.config import EngineConfig as Cfg

    assert (Cfg.from_model(q, "x.gguf").max_queued, Cfg.from_model(q, "x.gguf").queue_timeout_s) == (0, 5)
    assert (Cfg.from_model(settings.resolved_model("m"), "x.gguf").queue_timeout_s) == 120


def test_every_call_a_replica_may_hold_reaches_its_engine():
    """@serve.batch runs at most max_concurrent_batches batches at once and holds the calls beyond them in its own
    queue, unbounded and untimed, where the engine cannot shed them. A batch has at least one call, and a batch
    whose calls were all shed ends at once: with more batches than a replica's slots and wait queue, every call
    reaches the engine (through the replica front as through Serve)."""
    from deployments.llm import LlamaReplica

    batching = LlamaReplica._batched.set_max_batch_size.__self__  # Serve's lazy batch queue settings
    m = Settings().resolved_model(DEFAULT_MODEL)
    assert batching.max_concurrent_batches > 2 * (m.parallel + m.max_queued)


class _Gen:
    """A stand-in for a Serve streaming response that fails with ``err`` after yielding ``items``."""

    def __init__(self, items: list[Any], err: BaseException):
        self.items, self.err = list(items), err

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.items:
            return self.items.pop(0)
        raise self.err

    def cancel(self) -> None:
        pass


class _Handle:
    def __init__(self, items: list[Any], err: BaseException):
        self.stream = self
        self.items, self.err = items, err

    def options(self, **_: Any) -> _Handle:
        return self

    def remote(self, _call: Any) -> _Gen:
        return _Gen(self.items, self.err)


async def _through_serve_backend(items: list[Any], err: BaseException) -> list[Any]:
    from deployments.ingress import ServeBackend
    from kronk.api.completions.schemas import CompletionRequest
    from kronk.serving.call import Call, Endpoint, RequestContext

    backend = ServeBackend({"m": _Handle(items, err)}, Settings(models=[ModelConfig(name="m")]))
    call = Call(Endpoint.COMPLETIONS, CompletionRequest(model="m", prompt="hi"), RequestContext("r1"))
    return [i async for i in backend.stream(call)]


async def test_serve_backpressure_and_a_dead_replica_reach_the_client_as_503s_with_retry_after():
    from ray.exceptions import ActorDiedError
    from ray.serve.exceptions import BackPressureError

    [f] = await _through_serve_backend([], BackPressureError(num_queued_requests=64, max_queued_requests=64,
                                                             retry_after_s=2.0))
    assert (f.status, f.type, f.code, f.retry_after_s) == (503, "server_error", "overloaded", 2.0)
    assert "Retry after about 2 s" in f.message and "max_queued_requests=64" in f.message
    # a replica that dies mid-stream: the items so far, then one Failure (an SSE error event after them)
    first, f = await _through_serve_backend(["data: {}\n\n"], ActorDiedError())
    assert first == "data: {}\n\n"
    assert (f.status, f.code) == (503, "replica_unavailable") and f.retry_after_s >= 1
    # anything else is what it is (a 500 with a reference here)
    [f] = await _through_serve_backend([], ValueError("boom"))
    assert (f.status, f.code) == (500, "internal_error")
