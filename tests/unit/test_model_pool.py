"""The model pool (kronk/serving/pool.py) over real engines on the small models, in-process and over real HTTP:
on-demand loads, the memory budget and LRU eviction, busy models kept, one load for concurrent first requests,
keep-alive, load/unload and the state events."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kronk.api.app import create_app
from kronk.api.chat.schemas import ChatCompletionRequest
from kronk.api.families import HANDLERS
from kronk.engine import EngineConfig
from kronk.engine.engine import LlamaEngine
from kronk.serving.call import Call, Endpoint, RequestContext
from kronk.serving.items import Failure
from kronk.serving.local import LocalBackend
from kronk.serving.pool import KEEP_FOREVER, LoadPlan, ModelPool, parse_duration
from kronk.serving.service import ModelService
from tests.helpers import http_server
from tests.models import smollm_path

UNIT = 100  # each model's "estimate" in these tests; budgets are counted in them


class Loads:
    """A loader of small real engines (SmolLM2, 2 slots, 512 cells each) that counts its loads."""

    def __init__(self, fail: set[str] = frozenset(), delay_s: float = 0.0):
        self.count: dict[str, int] = {}
        self.fail, self.delay_s = set(fail), delay_s
        self.lock = threading.Lock()

    def __call__(self, model: str, plan: LoadPlan) -> ModelService:
        with self.lock:
            self.count[model] = self.count.get(model, 0) + 1
        time.sleep(self.delay_s)
        if model in self.fail:
            raise RuntimeError(f"{model}: bad file")
        eng = LlamaEngine(EngineConfig(batch_invariant=True,
                                       model_path=smollm_path(), name=model, parallel=2, ctx_size=512))
        return ModelService(eng, model, HANDLERS)


def estimate(sizes: dict[str, int] | None = None):
    return lambda model, free: LoadPlan((sizes or {}).get(model, UNIT), {"ctx_size": 512, "parallel": 2})


def chat(model: str, max_tokens: int = 4, keep_alive: Any = None, stream: bool = False) -> Call:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Say hello."}],
                            "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    return Call(Endpoint.CHAT, ChatCompletionRequest.model_validate(body), RequestContext(f"t-{model}-{time.time()}"))


async def answer(pool: ModelPool, call: Call) -> list[Any]:
    return [item async for item in pool.stream(call)]


def run(coro):
    return asyncio.run(coro)


def test_keep_alive_durations():
    assert parse_duration("5m") == 300 and parse_duration("1h30m") == 5400 and parse_duration("250ms") == 0.25
    assert parse_duration(0) == 0 and parse_duration("10") == 10 and parse_duration(2.5) == 2.5
    assert parse_duration(-1) == KEEP_FOREVER and parse_duration("-1m") == KEEP_FOREVER
    for bad in ("5x", "", "m", "1.2.3s", "5m" * 40, True):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_a_model_is_loaded_on_its_first_request_and_reused():
    loads = Loads()

    async def go():
        pool = ModelPool(loads, estimate(), budget_bytes=3 * UNIT)
        first = await answer(pool, chat("a"))
        again = await answer(pool, chat("a"))
        states = pool.states()
        await pool.close()
        return first, again, states

    first, again, states = run(go())
    assert isinstance(first[0], dict) and first[0]["choices"][0]["message"]["content"], first
    assert isinstance(again[0], dict)
    assert loads.count == {"a": 1}
    assert [(s["model"], s["state"], s["active"]) for s in states] == [("a", "loaded", 0)]


def test_the_least_recently_used_idle_model_is_evicted_to_make_room():
    loads = Loads()

    async def go():
        events: list[dict] = []
        pool = ModelPool(loads, estimate(), budget_bytes=2 * UNIT, on_event=events.append)
        await answer(pool, chat("a"))
        await answer(pool, chat("b"))
        await answer(pool, chat("a"))  # a is now the most recently used: b goes first
        await answer(pool, chat("c"))
        loaded = sorted(pool.services())
        await pool.close()
        return loaded, events

    loaded, events = run(go())
    assert loaded == ["a", "c"]
    assert [(e["type"], e["model"]) for e in events] == [
        ("loading", "a"), ("loaded", "a"), ("loading", "b"), ("loaded", "b"), ("evicted", "b"), ("loading", "c"),
        ("loaded", "c")]
    assert events[4]["for_model"] == "c"


def test_a_model_with_a_running_stream_is_never_evicted_and_a_request_without_room_gets_a_503():
    loads = Loads()

    async def go():
        pool = ModelPool(loads, estimate(), budget_bytes=2 * UNIT)
        long_a = pool.stream(chat("a", max_tokens=64, stream=True))
        first = await long_a.__anext__()  # a is answering
        long_b = pool.stream(chat("b", max_tokens=64, stream=True))
        await long_b.__anext__()  # so is b: the budget is full of busy models
        refused = await answer(pool, chat("c"))
        rest_a = [item async for item in long_a]  # a's stream finishes
        await long_b.aclose()
        after = await answer(pool, chat("c"))  # now there is an idle model to evict
        loaded = sorted(pool.services())
        await pool.close()
        return first, refused, rest_a, after, loaded

    first, refused, rest_a, after, loaded = run(go())
    assert isinstance(first, str) and first.startswith("data: ")
    assert len(refused) == 1 and isinstance(refused[0], Failure), refused
    f = refused[0]
    assert (f.status, f.code) == (503, "pool_busy") and f.headers() == {"Retry-After": "5"}
    assert "a, b" in f.message
    assert not any(isinstance(i, Failure) for i in rest_a) and rest_a[-1].endswith("data: [DONE]\n\n")
    assert isinstance(after[0], dict)
    assert "c" in loaded and len(loaded) == 2


def test_concurrent_first_requests_cause_one_load():
    loads = Loads(delay_s=0.5)  # the load takes a while: the other requests arrive during it

    async def go():
        events: list[dict] = []
        pool = ModelPool(loads, estimate(), budget_bytes=2 * UNIT, on_event=events.append)
        answers = await asyncio.gather(*(answer(pool, chat("a")) for _ in range(4)))
        await pool.close()
        return answers, events

    answers, events = run(go())
    assert loads.count == {"a": 1}
    assert all(isinstance(a[0], dict) for a in answers), answers
    assert [e["type"] for e in events] == ["loading", "loaded"]


def test_keep_alive_zero_unloads_after_the_answer_and_a_duration_after_idling():
    loads = Loads()

    async def go():
        events: list[dict] = []
        pool = ModelPool(loads, estimate(), budget_bytes=3 * UNIT, on_event=events.append)
        await answer(pool, chat("a", keep_alive=0))
        for _ in range(50):  # the unload runs after the answer
            if "a" not in pool.entries:
                break
            await asyncio.sleep(0.1)
        gone_a = "a" not in pool.entries
        await answer(pool, chat("b", keep_alive="1s"))
        kept_b = "b" in pool.entries
        for _ in range(60):  # the reaper checks every second
            if "b" not in pool.entries:
                break
            await asyncio.sleep(0.1)
        gone_b = "b" not in pool.entries
        await answer(pool, chat("c", keep_alive=-1))
        forever = pool.state_of("c")
        await pool.close()
        return gone_a, kept_b, gone_b, forever, events

    gone_a, kept_b, gone_b, forever, events = run(go())
    assert gone_a and kept_b and gone_b
    assert forever["state"] == "loaded" and forever["keep_alive_s"] is None  # None: kept until unloaded
    assert [(e["type"], e["model"], e.get("reason")) for e in events if e["type"] == "unloaded"] == [
        ("unloaded", "a", "keep_alive"), ("unloaded", "b", "keep_alive")]


def test_a_failed_load_is_an_error_for_its_requests_and_retried_by_the_next():
    loads = Loads(fail={"bad"})

    async def go():
        events: list[dict] = []
        pool = ModelPool(loads, estimate(), budget_bytes=UNIT, on_event=events.append)
        first = await answer(pool, chat("bad"))
        failed = pool.state_of("bad")
        second = await answer(pool, chat("bad"))
        ok = await answer(pool, chat("good"))  # the failed load's reservation is free again
        await pool.close()
        return first, failed, second, ok, events

    first, failed, second, ok, events = run(go())
    assert failed["state"] == "error" and "bad file" in failed["error"]  # listed with the reason
    for r in (first, second):
        assert len(r) == 1 and isinstance(r[0], Failure) and r[0].status == 503
        assert r[0].code == "model_unavailable" and "bad file" in r[0].message
    assert loads.count["bad"] == 2 and isinstance(ok[0], dict)
    assert [e["type"] for e in events][:2] == ["loading", "error"]


def test_a_model_larger_than_the_whole_budget_is_refused_without_evicting():
    loads = Loads()

    async def go():
        pool = ModelPool(loads, estimate({"huge": 5 * UNIT}), budget_bytes=2 * UNIT)
        await answer(pool, chat("a"))
        refused = await answer(pool, chat("huge"))
        loaded = sorted(pool.services())
        await pool.close()
        return refused, loaded

    refused, loaded = run(go())
    assert isinstance(refused[0], Failure) and (refused[0].status, refused[0].code) == (507, "insufficient_memory")
    assert "budget" in refused[0].message and loaded == ["a"] and "huge" not in Loads().count


# ---- over HTTP: the routes over a LocalBackend with a pool (installed models come from the store)
class FakeStore:
    """The model manager's listing: three installed models (the pool loads them all from the same GGUF)."""

    def __init__(self, names: list[str]):
        self.names = names

    async def call(self, method: str, *args: Any) -> Any:
        if method == "list_models":
            return [{"name": n, "created_at": "2026-01-01T00:00:00"} for n in self.names]
        if method == "served_as":
            return None
        if method == "remove":
            self.names.remove(args[0])
            return True
        raise AssertionError(method)


@pytest.fixture
def pool_url(tmp_path) -> Iterator[tuple[str, Loads]]:
    loads = Loads()
    pool = ModelPool(loads, estimate(), budget_bytes=2 * UNIT)
    store = FakeStore(["m1", "m2", "m3"])
    backend = LocalBackend({}, ops=lambda: store, pool=pool)
    with http_server(create_app(backend)) as url:
        yield url, loads


def chat_body(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0,
            **extra}


def states(url: str) -> dict[str, str]:
    return {m["id"]: m["state"] for m in httpx.get(url + "/v1/models", timeout=30).json()["data"]}


def test_installed_models_are_listed_with_their_state_and_served_on_first_request(pool_url):
    url, loads = pool_url
    assert states(url) == {"m1": "available", "m2": "available", "m3": "available"}
    cards = httpx.get(url + "/v1/models", timeout=30).json()["data"]
    assert all(c["served"] is True and c["pinned"] is False for c in cards)
    r = httpx.post(url + "/v1/chat/completions", json=chat_body("m2"), timeout=120)
    assert r.status_code == 200, r.text
    assert states(url)["m2"] == "loaded"
    card = httpx.get(url + "/v1/models/m2", timeout=30).json()
    assert card["loaded_on"][0]["settings"] == {"ctx_size": 512, "parallel": 2}, card
    # an unknown model is still a 404, never a load
    r = httpx.post(url + "/v1/chat/completions", json=chat_body("nope"), timeout=30)
    assert r.status_code == 404 and "nope" not in loads.count


def test_load_unload_and_the_event_stream(pool_url):
    url, loads = pool_url
    seen: list[tuple[str, str]] = []
    opened = threading.Event()

    def listen():
        with httpx.stream("GET", url + "/v1/models/events", timeout=60) as r:
            opened.set()
            kind = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    seen.append((kind, json.loads(line[6:])["model"]))
                    if len(seen) == 5:
                        return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert opened.wait(30)
    time.sleep(0.3)  # the stream is subscribed once its first byte is out
    r = httpx.post(url + "/v1/models/m1/load", json={"keep_alive": "10m"}, timeout=120)
    assert r.status_code == 200 and r.json()["state"] == "loaded" and r.json()["keep_alive_s"] == 600, r.text
    r = httpx.post(url + "/v1/models/m1/unload", timeout=60)
    assert r.status_code == 200 and r.json()["state"] == "available", r.text
    assert httpx.post(url + "/v1/models/m1/unload", timeout=60).status_code == 409  # not loaded
    assert httpx.post(url + "/v1/models/m2/load", timeout=120).status_code == 200
    t.join(30)
    assert seen == [("loading", "m1"), ("loaded", "m1"), ("unloaded", "m1"), ("loading", "m2"), ("loaded", "m2")]
    r = httpx.post(url + "/v1/models/m1/load", json={"keep_alive": "soon"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "keep_alive"
    assert httpx.post(url + "/v1/models/zzz/load", timeout=30).status_code == 404


def test_deleting_a_loaded_idle_pool_model_unloads_it_first(pool_url):
    url, _ = pool_url
    assert httpx.post(url + "/v1/chat/completions", json=chat_body("m3"), timeout=120).status_code == 200
    r = httpx.delete(url + "/v1/models/m3", timeout=60)
    assert r.status_code == 200 and r.json()["deleted"] is True, r.text
    assert "m3" not in states(url)
