"""``http_front: replica`` (what `kronk server start` runs for one local model): Serve runs no HTTP proxy and the
model's replicas listen on the port themselves (deployments/direct_http.py).

The request-path tests of test_routing_ingress.py (and a completions test) run again against it (pytest
collects the imported tests here, with this module's fixtures), then what only this front has to get right: no
proxy, the model at normal priority, an update that lets running streams finish on the old replica, a crashed
replica's replacement, with no connection refused in either, and a fixed count of replicas sharing the port.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from ray import serve

from deployments.app import build_app, wait_until_running
from tests.helpers import GEMMA, openai_client
from tests.integration.test_routing_ingress import (  # noqa: F401  (collected again, against this app)
    test_bad_input_gets_its_envelope_and_the_server_stays_healthy,
    test_disconnect_mid_stream_frees_the_slot,
    test_embeddings_reach_the_model,
    test_latecomer_starts_while_long_streams_run,
)
from tests.integration.utils import serve_app
from tests.processes import processes_named, thread_nices
from tests.unit.test_api_completions import test_completions_streamed_and_not  # noqa: F401
from tests.waiting import until

pytestmark = pytest.mark.slow

MODEL = {"name": GEMMA, "parallel": 4, "ctx_size": 2048, "num_cpus": 1}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return str(tmp_path_factory.mktemp("kronk-home"))


@pytest.fixture(scope="module")
def url(home):
    with serve_app({"home": home, "http_front": "replica", "models": [MODEL]}) as u:
        yield u


@pytest.fixture(scope="module")
def client(url):
    return openai_client(url)


def redeploy(url: str, home: str, **changes) -> None:
    port = int(url.rsplit(":", 1)[1])
    args = {"home": home, "http_front": "replica", "host": "127.0.0.1", "port": port, "models": [MODEL], **changes}
    serve.run(build_app(args), name="kronk", route_prefix="/", blocking=False)


def replica_answering(url: str, timeout_s: float = 30) -> str:
    """The replica that answered a fresh connection (each replica reports itself in /v1/stats)."""
    return httpx.get(url + "/v1/stats", timeout=timeout_s).json()["models"][GEMMA]["replica"]


def test_no_serve_proxy_runs_and_the_replica_answers(url, client):
    assert serve.status().proxies == {}
    assert httpx.get(url + "/health", timeout=10).json() == {"status": "ok", "models": [GEMMA]}
    r = client.chat.completions.create(model=GEMMA, messages=[{"role": "user", "content": "Say hi."}],
                                       temperature=0, max_tokens=8)
    assert r.usage.completion_tokens > 0 and r.choices[0].message.content
    text = httpx.get(url + "/metrics", timeout=30).text
    assert 'route="/v1/chat/completions"' in text and "kronk_completion_tokens_total{" in text
    r = httpx.post(url + "/v1/chat/completions", timeout=30,
                   json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_the_model_runs_at_normal_priority_and_ray_services_below(url):
    # serve_app lowers Ray's services as `kronk server start` does (deployments/ray_env.py)
    assert thread_nices("ray::ServeReplica:kronk:") == {0}  # every thread, llama.cpp's decode threads among them
    for name in ("gcs_server", "ray::ServeController", "ray::DashboardAgent", "log_monitor.py"):
        assert thread_nices(name) == {19}, name


def test_an_update_lets_running_streams_finish_and_refuses_no_connection(url, home):
    """When Serve replaces the replica, the old one stops accepting at once and the stream running on it still
    ends normally. Fresh connections are never refused meanwhile: they wait in the listener that the process
    which started Serve keeps (deployments/listener.py) until the new replica accepts them."""
    old = replica_answering(url)
    n_tokens = 600
    result: dict = {}

    def long_stream() -> None:
        body = {"model": GEMMA, "prompt": "Write a very long story about the sea:", "stream": True,
                "max_tokens": n_tokens, "temperature": 0, "ignore_eos": True,
                "stream_options": {"include_usage": True}}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=300) as r:
            for line in r.iter_lines():
                if line == "data: [DONE]":
                    result["done"] = True
                elif line.startswith("data: "):
                    c = json.loads(line[6:])
                    if c["choices"] and c["choices"][0]["finish_reason"]:
                        result["finish_reason"] = c["choices"][0]["finish_reason"]
                    if c.get("usage"):
                        result["usage"] = c["usage"]

    t = threading.Thread(target=long_stream)
    t.start()
    until(lambda: httpx.get(url + "/v1/stats", timeout=30).json()["models"][GEMMA]["stats"]["active"] >= 1,
          30, "the long stream to start")
    # serve.run returns once the update is done: run it beside the checks (new init args replace the replica)
    update = threading.Thread(target=redeploy, args=(url, home), kwargs={"log_level": "DEBUG"})
    update.start()
    streak = {"n": 0, "answers": 0}

    def old_replica_gone() -> bool:  # several fresh connections in a row answered by the new replica
        answered_by = replica_answering(url, timeout_s=180)  # a refused connection raises ConnectError
        streak["answers"] += 1
        streak["n"] = streak["n"] + 1 if answered_by != old else 0
        return streak["n"] >= 5

    until(old_replica_gone, 240, "the new replica to take the connections")
    assert t.is_alive(), "the stream ended before the old replica stopped: make it longer"
    t.join(300)
    update.join(300)
    assert result.get("done") and result.get("finish_reason") == "length", result
    assert result["usage"]["completion_tokens"] == n_tokens
    wait_until_running("kronk", 180)
    assert replica_answering(url) != old


def test_a_crashed_replica_is_replaced_and_no_connection_is_refused(url):
    old = replica_answering(url)
    [replica] = processes_named(f"ray::ServeReplica:kronk:llm-{GEMMA}")
    replica.kill()  # SIGKILL: no drain, the process and its copy of the listener are gone at once
    replica.wait(30)
    # sent while nothing accepts: it waits in the kept listener's queue until Serve's replacement takes it
    r = httpx.post(url + "/v1/chat/completions", timeout=300, json={
        "model": GEMMA, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0
    assert replica_answering(url) != old
    wait_until_running("kronk", 180)


def test_a_fixed_count_of_replicas_share_the_port(url, home):
    # without prefix routing, which would need the routing ingress (its handle calls carry the parsed request)
    redeploy(url, home, min_replicas=2, max_replicas=2, prefix_routing=False)
    until(lambda: serve.status().applications["kronk"].deployments[f"llm-{GEMMA}"].replica_states.get(
        "RUNNING", 0) == 2, 180, "two running replicas")
    wait_until_running("kronk", 120)
    seen = set()
    deadline = time.monotonic() + 60
    while len(seen) < 2 and time.monotonic() < deadline:
        seen.add(replica_answering(url))  # a new connection each time: the kernel spreads them
    assert len(seen) == 2, seen
    agg = httpx.get(url + "/v1/stats", timeout=30).json()["models"][GEMMA]
    assert agg["replicas"] == 2
