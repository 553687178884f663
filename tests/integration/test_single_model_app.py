"""One served model: its replicas serve HTTP themselves (deployments/server.py), no routing ingress.

The request-path tests of test_routing_ingress.py (and a completions test) run again against this application
shape (pytest collects the imported tests here, with this module's fixtures),
plus what only this shape has to get right on its own.
"""

from __future__ import annotations

import threading

import httpx
import pytest
import ray
from ray import serve

from tests.helpers import GEMMA, openai_client
from tests.integration.test_routing_ingress import (  # noqa: F401  (collected again, against this app)
    test_bad_input_gets_its_envelope_and_the_server_stays_healthy,
    test_disconnect_mid_stream_frees_the_slot,
    test_embeddings_reach_the_model,
    test_latecomer_starts_while_long_streams_run,
)
from tests.integration.utils import serve_app
from tests.unit.test_api_completions import test_completions_streamed_and_not  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url():
    # max_ongoing_requests 3: the model admits 3 generations per replica (the latecomer test needs 3 at once)
    with serve_app({"models": [{"name": GEMMA, "parallel": 4, "ctx_size": 2048, "num_cpus": 1,
                                "max_ongoing_requests": 3}]}) as u:
        yield u


@pytest.fixture(scope="module")
def client(url):
    return openai_client(url)


def test_the_model_replica_is_the_only_deployment(url):
    assert ray.is_initialized()
    deps = serve.status().applications["kronk"].deployments
    assert set(deps) == {"llm-gemma3-270m"}, set(deps)  # no "Ingress" deployment


def test_models_health_and_unknown_model(url, client):
    pinned = [m.id for m in client.models.list() if getattr(m, "pinned", True)]
    assert pinned == [GEMMA]
    assert httpx.get(url + "/health", timeout=10).json() == {"status": "ok", "models": [GEMMA]}
    r = httpx.post(url + "/v1/chat/completions", timeout=30,
                   json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "model_not_found" and GEMMA in err["message"]


def test_chat_and_metrics_through_the_replica(url, client):
    r = client.chat.completions.create(model=GEMMA, messages=[{"role": "user", "content": "Say hi."}],
                                       temperature=0, max_tokens=8)
    assert r.usage.completion_tokens > 0 and r.choices[0].message.content
    text = httpx.get(url + "/metrics", timeout=30).text
    # the HTTP side and the engine side are both counted by this one replica
    assert 'kronk_requests_total{' in text and 'route="/v1/chat/completions"' in text
    assert "kronk_completion_tokens_total{" in text
    stats = httpx.get(url + "/v1/stats", timeout=30).json()["models"][GEMMA]
    assert stats["replicas"] == 1 and stats["aggregate"]["requests"]["total"] >= 1
    assert stats["aggregate"]["replica_ids"] == [stats["replica"]]


def test_a_replica_at_its_admission_limit_still_answers_health_and_metrics(url):
    """With as many generations streaming as the model's max_ongoing_requests, /health and /metrics are
    answered at once (the replica's HTTP headroom), not after a generation ends."""
    body = {"model": GEMMA, "prompt": "Tell a long story:", "stream": True, "max_tokens": 400,
            "temperature": 0, "ignore_eos": True}
    started = threading.Barrier(4)
    done = []

    def long_stream():
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=300) as r:
            lines = r.iter_lines()
            next(ln for ln in lines if ln.startswith("data: "))  # streaming: it holds its place
            started.wait(timeout=120)
            done.append(sum(1 for _ in lines))

    threads = [threading.Thread(target=long_stream) for _ in range(3)]
    for t in threads:
        t.start()
    started.wait(timeout=120)
    assert httpx.get(url + "/health", timeout=60).status_code == 200
    assert "kronk_requests_total" in httpx.get(url + "/metrics", timeout=60).text
    assert not done, "a generation ended before /health and /metrics were answered: they had to wait"
    for t in threads:
        t.join(timeout=300)
    assert len(done) == 3 and all(n > 100 for n in done)  # every long stream ran to its end
