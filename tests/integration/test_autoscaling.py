"""Per-model autoscaling on a real local Ray cluster, real HTTP, real llama.cpp.

* ``gemma3-270m`` (min 1, max 2, target 1 ongoing request per replica): concurrent
  streamed requests scale it from 1 to 2 replicas, both replicas answer, and when
  the load stops it goes back to 1, with no failed request.
* ``gemma-idle`` (the same GGUF, min 0): starts with no replica; the first request
  waits for a cold start and gets a normal answer, and the idle model goes back
  to 0 replicas.

Serve's delays are shortened for the test, per model: ``upscale_delay_s``,
``downscale_delay_s`` and ``look_back_period_s`` (load is then reported every second).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest
import ray
from ray import serve

from deployments.app import build_app, wait_until_running
from deployments.llm import deployment_name
from tests.integration.utils import free_port
from tests.waiting import until

pytestmark = pytest.mark.slow

BUSY = "gemma3-270m"
IDLE = "gemma-idle"
ENGINE = {"parallel": 2, "ctx_size": 512, "threads": 1, "num_cpus": 0.5}
FAST_SCALING = {"upscale_delay_s": 1.0, "downscale_delay_s": 4.0, "look_back_period_s": 2.0}
# Two busy replicas on two cores answer Serve's queue-length probes slowly (default deadline 0.1s).
RAY_ENV = {"RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S": "0.5"}


def replica_states(model: str) -> dict[str, int]:
    app = serve.status().applications.get("kronk")
    dep = app.deployments.get(deployment_name(model)) if app else None
    return {str(k): int(v) for k, v in dep.replica_states.items() if v} if dep else {}


def running_replicas(model: str) -> int:
    return replica_states(model).get("RUNNING", 0)


class App(NamedTuple):
    url: str
    models_dir: Path


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    saved = {k: os.environ.get(k) for k in (*RAY_ENV, "KRONK_MODELS_DIR", "KRONK_CONFIG")}
    os.environ.pop("KRONK_MODELS_DIR", None)
    os.environ.pop("KRONK_CONFIG", None)
    os.environ.update(RAY_ENV)  # inherited by the raylet, so by the controller, proxy and replicas
    home = tmp_path_factory.mktemp("kronk-home")
    args = {
        "home": str(home),
        "models_dir": str(home / "models"),
        "models": [
            {"name": BUSY, **ENGINE, **FAST_SCALING, "min_replicas": 1, "max_replicas": 2,
             "target_ongoing_requests": 1},
            {"name": IDLE, "source": BUSY, **ENGINE, **FAST_SCALING, "min_replicas": 0, "initial_replicas": 0,
             "max_replicas": 1, "target_ongoing_requests": 1},
        ],
    }
    port = free_port()
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="kronk-test",
                 runtime_env={"env_vars": {"KRONK_HOME": str(home)}})
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name="kronk", route_prefix="/", blocking=False)
        wait_until_running("kronk", timeout_s=180)
        yield App(f"http://127.0.0.1:{port}", home / "models")
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def stream_completion(http: httpx.Client, model: str, max_tokens: int) -> str:
    """One streamed completion; returns its text, raises on any error (status, error event, no [DONE])."""
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 0.8,
            "stream": True}
    text, done = "", False
    with http.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise AssertionError(f"status {r.status_code}: {r.read().decode(errors='replace')}")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: "):]
            if data == "[DONE]":
                done = True
                continue
            event = json.loads(data)
            if "error" in event:
                raise AssertionError(f"error event: {event['error']}")
            text += event["choices"][0].get("text") or ""
    if not done:
        raise AssertionError("stream ended without [DONE]")
    return text


def test_scales_up_under_load_and_back_down_with_no_failed_request(app: App) -> None:
    url = app.url
    name = deployment_name(BUSY)
    assert running_replicas(BUSY) == 1
    stop = threading.Event()
    results: Counter[str] = Counter()
    errors: list[str] = []
    timeline: list[tuple[float, dict[str, int]]] = []
    t0 = time.monotonic()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while not stop.is_set():
                try:
                    stream_completion(http, BUSY, max_tokens=32)
                    results["ok"] += 1
                except Exception as e:
                    results["failed"] += 1
                    errors.append(repr(e))

    def watch(running: int) -> bool:
        states = replica_states(BUSY)
        if not timeline or timeline[-1][1] != states:
            timeline.append((round(time.monotonic() - t0, 1), states))
        return states == {"RUNNING": running}

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client) for _ in range(4)]
        try:
            until(lambda: watch(2), 90, "a second replica under load")
            # keep the load on until the new replica has answered requests too
            handle = serve.get_deployment_handle(name, app_name="kronk")

            def both_served() -> bool:
                watch(2)
                seen = {}
                for _ in range(20):
                    info = handle.info.remote().result(timeout_s=30)
                    seen[info["replica"]] = info["stats"]["requests"]
                return len(seen) == 2 and all(n > 0 for n in seen.values())

            until(both_served, 60, "both replicas to serve requests", interval_s=1)
        finally:
            stop.set()
            for f in futures:
                f.result(timeout=180)
    loaded_ok = results["ok"]
    until(lambda: watch(1), 90, "scaling back down to one replica after the load")
    print(f"replicas over time (s, states): {timeline}; requests: {dict(results)}")
    running = [states.get("RUNNING", 0) for _, states in timeline]
    assert running[0] == 1 and max(running) == 2 and running[-1] == 1, timeline
    assert results["failed"] == 0, errors[:5]
    assert loaded_ok >= 4

    # the remaining replica still answers
    with httpx.Client(base_url=url, timeout=120) as http:
        assert stream_completion(http, BUSY, max_tokens=4) is not None


def test_idle_model_scales_from_zero_with_a_wait_not_an_error_and_back_to_zero(app: App) -> None:
    url = app.url
    assert running_replicas(IDLE) == 0
    with httpx.Client(base_url=url, timeout=120) as http:
        t = time.monotonic()
        r = http.post("/v1/completions", json={"model": IDLE, "prompt": "Hello", "max_tokens": 4})
        cold = time.monotonic() - t
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] > 0
        assert running_replicas(IDLE) == 1
        t = time.monotonic()
        assert stream_completion(http, IDLE, max_tokens=4) is not None
        warm = time.monotonic() - t
    print(f"cold start request {cold:.1f}s, warm request {warm:.1f}s")
    until(lambda: running_replicas(IDLE) == 0, 60, "the idle model to scale back to zero")
    assert running_replicas(BUSY) >= 1  # the other model is not affected
    # both models, all their replicas: one installed GGUF in the models dir
    assert len(list(app.models_dir.glob("*/manifest.json"))) == 1
