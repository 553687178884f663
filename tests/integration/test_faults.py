"""Faults and overload against a real Serve app: a model replica killed (SIGKILL) mid-stream, and 48 streams at
once on a 4-slot model, on both HTTP fronts.

Through the routing ingress the client's connection is the ingress's, so the stream ends with an SSE ``error``
event (ServeBackend.stream turns the Ray error into a 503 Failure) and the response closes normally; pulls
carry on in the model manager (a detached actor of its own). On the default replica front the replica *is* the
HTTP server: when it dies, its connections die with it, and the client sees a truncated chunked body (or a
reset), never an error event; the kept listener holds new connections until the replacement takes them.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest

from tests.helpers import GEMMA
from tests.hubserver import HubServer, make_gguf
from tests.integration.utils import serve_app
from tests.processes import processes_named
from tests.unit.test_admission import check_outcomes, run_streams
from tests.waiting import until

pytestmark = pytest.mark.slow

MODEL = {"name": GEMMA, "parallel": 4, "ctx_size": 1024, "num_cpus": 1, "threads": 1}
REPO, FILE = "org/Tiny-GGUF", "tiny-Q4_K_M.gguf"


class LongStream(threading.Thread):
    """A streamed completion read line by line; ``started`` is set at its first token. What it saw and how it
    ended: ``events``, ``done`` ([DONE] came), ``error`` (the exception that ended the read, if one did),
    ``ended_at`` (monotonic)."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.started = threading.Event()
        self.events: list[dict[str, Any]] = []
        self.done = False
        self.error: BaseException | None = None
        self.ended_at = 0.0

    def run(self) -> None:
        body = {"model": GEMMA, "prompt": "Write a very long story about the sea:", "stream": True,
                "max_tokens": 800, "temperature": 0, "ignore_eos": True}
        try:
            with httpx.stream("POST", self.url + "/v1/completions", json=body, timeout=60) as r:
                assert r.status_code == 200, r.read()
                for line in r.iter_lines():
                    if line == "data: [DONE]":
                        self.done = True
                    elif line.startswith("data: "):
                        self.events.append(json.loads(line[6:]))
                        self.started.set()
        except Exception as e:  # what the client sees when the connection goes
            self.error = e
        finally:
            self.ended_at = time.monotonic()


def kill_model_replica() -> float:
    """SIGKILL the model's replica process (no drain, no goodbye); the time it was killed."""
    [replica] = processes_named(f"ray::ServeReplica:kronk:llm-{GEMMA}")
    replica.kill()
    t = time.monotonic()
    replica.wait(30)
    return t


def answered(url: str, seen: list[tuple[int, str | None]]) -> bool:
    """One chat request: True on a 200; anything else must be a 503 with Retry-After (recorded in ``seen``)."""
    try:
        r = httpx.post(url + "/v1/chat/completions", timeout=180, json={
            "model": GEMMA, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0})
    except httpx.TransportError as e:
        seen.append((0, type(e).__name__))
        return False
    if r.status_code == 200:
        return r.json()["usage"]["completion_tokens"] > 0
    seen.append((r.status_code, r.headers.get("retry-after")))
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, (r.status_code, r.text)
    return False


@pytest.fixture(scope="module")
def hub():
    server = HubServer(chunk_size=32 * 1024)
    server.add_repo(REPO, {FILE: make_gguf(2_000_000, seed=21)})
    with server:
        yield server


def kill_mid_stream(url: str) -> tuple[LongStream, float]:
    """A long stream whose model replica is SIGKILLed once it runs: the stream (ended) and how many seconds after
    the kill it ended."""
    stream = LongStream(url)
    stream.start()
    assert stream.started.wait(120), "the stream did not start"
    killed = kill_model_replica()
    stream.join(30)
    assert not stream.is_alive(), "the stream hangs after its replica died"
    return stream, stream.ended_at - killed


def test_a_replica_killed_mid_stream_behind_the_routing_ingress_ends_the_stream_with_an_error_event(hub):
    with serve_app({"ingress": "router", "hf_endpoint": hub.url, "models": [MODEL]}) as url:
        # a pull, held mid-download: it runs in the model manager, not in the replica about to die
        hold = hub.hold(REPO, FILE, after=500_000)
        job = httpx.post(url + "/v1/models/pull", json={"model": f"hf.co/{REPO}/{FILE}"}, timeout=60).json()
        assert hold.reached.wait(60)

        stream, took = kill_mid_stream(url)
        print(f"\nrouting ingress: the stream ended {took:.2f} s after the kill, with {stream.events[-1]}")
        assert took < 10
        assert stream.error is None and not stream.done  # closed normally, and not as if the answer were complete
        err = stream.events[-1]["error"]  # the last event: the OpenAI envelope
        assert (err["type"], err["code"]) == ("server_error", "replica_unavailable")
        assert "Retry after about" in err["message"]

        # the server answers again once the replacement is up (meanwhile only 503s with Retry-After)
        t0, seen = time.monotonic(), []
        until(lambda: answered(url, seen), 300, lambda: f"an answer after the kill (saw {seen})")
        print(f"answered again {time.monotonic() - t0:.1f} s later; before that: {seen}")
        assert all(s[0] == 503 for s in seen), seen

        # the pull was not lost: the same job finishes
        assert httpx.get(f"{url}/v1/models/pull/{job['id']}", timeout=30).json()["status"] == "running"
        hold.release.set()
        until(lambda: httpx.get(f"{url}/v1/models/pull/{job['id']}", timeout=30).json()["status"] == "succeeded",
              120, "the pull to succeed")


def test_the_replica_front_sheds_load_with_503s_and_a_killed_replica_truncates_its_streams():
    timeout_s = 5
    with serve_app({"http_front": "replica", "models": [{**MODEL, "max_queued": 8, "queue_timeout_s": timeout_s}]}
                   ) as url:
        # 48 streams at once on 4 slots, at most 8 waiting, at most 5 s: each completes or gets a 503, none is cut
        # or hangs, and none waits longer (every call reaches the engine's queue: none waits in Serve's batching)
        t0 = time.monotonic()
        results = run_streams(url, 48)
        seen = check_outcomes(results)
        print(f"\nreplica front, 48 streams, 4 slots, max_queued=8, queue_timeout_s={timeout_s}: {seen}, all done "
              f"in {time.monotonic() - t0:.1f} s")
        assert seen["completed"] + seen["overloaded"] + seen["queue_timeout"] == 48
        assert 0 < seen["overloaded"] <= 48 - 4 - 8
        waits = sorted(r["wait_s"] for r in results if r["status"] == 200)
        assert waits[-1] < timeout_s + 10, waits  # its wait for a slot, plus its prompt and first token

        # the replica dies mid-stream: its connection dies with it
        stream, took = kill_mid_stream(url)
        print(f"replica front: the stream ended {took:.2f} s after the kill: {type(stream.error).__name__}: "
              f"{stream.error}; error event: {'error' in stream.events[-1]}")
        assert took < 10 and not stream.done
        # a truncated chunked body (or a reset): the client knows the answer is incomplete, from no one
        assert isinstance(stream.error, httpx.RemoteProtocolError | httpx.ReadError), repr(stream.error)

        # a request sent now waits in the kept listener until the replacement takes it
        seen: list = []
        until(lambda: answered(url, seen), 300, lambda: f"an answer after the kill (saw {seen})")
        assert seen == [], seen
