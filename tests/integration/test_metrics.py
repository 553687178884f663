"""Metrics through the real Serve app: /metrics, Ray's own Prometheus endpoint and /v1/stats agree
with each other and with what the responses said (usage), for every kronk metric.

One app (Gemma, 2 slots), a fake Hugging Face hub for pulls; traffic: completions (plain, streamed,
a long prompt in the 512-2k context bucket), a streamed chat, embeddings, one 400, one pull that
succeeds and one that fails. Ray reports metrics every second here (RAY_metrics_report_interval_ms).
"""

from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from kronk.telemetry import prometheus, specs
from kronk.telemetry.buckets import context_bucket
from kronk.telemetry.stats import Histogram
from tests.helpers import sse_usage
from tests.hubserver import HubServer, make_gguf
from tests.integration.cli_utils import clean_env, kronk_json
from tests.integration.utils import serve_app
from tests.waiting import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

GEMMA = "gemma3-270m"
REPO, FILE = "org/Tiny-GGUF", "Tiny-Q4_K_M.gguf"
DATA = make_gguf(400_000)
LONG_PROMPT = "one two three four five six seven eight nine ten " * 70
REPORT_INTERVAL = "RAY_metrics_report_interval_ms"  # Ray's system config, read from the environment
RAY_LABELS = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId", "otel_scope_name",
              "otel_scope_schema_url", "otel_scope_version", "instance", "job"}


@pytest.fixture(scope="module")
def app():
    old = os.environ.get(REPORT_INTERVAL)
    os.environ[REPORT_INTERVAL] = "1000"
    hub = HubServer(chunk_size=64 * 1024)
    hub.add_repo(REPO, {FILE: DATA})
    models = [{"name": GEMMA, "parallel": 2, "ctx_size": 2048, "num_cpus": 1}]
    try:
        with hub, serve_app({"models": models, "hf_endpoint": hub.url}) as url:
            import ray

            node = next(n for n in ray.nodes() if n["Alive"])
            ray_url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
            yield SimpleNamespace(url=url, ray_url=ray_url, traffic=send_traffic(url))
    finally:
        if old is None:
            os.environ.pop(REPORT_INTERVAL, None)
        else:
            os.environ[REPORT_INTERVAL] = old


def pull(h: httpx.Client, ref: str) -> dict[str, Any]:
    job = h.post("/v1/models/pull", json={"model": ref}).json()
    deadline = time.monotonic() + 60
    while job["status"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = h.get(f"/v1/models/pull/{job['id']}").json()
    return job


def send_traffic(url: str) -> dict[str, Any]:
    gens: list[dict[str, Any]] = []
    with httpx.Client(base_url=url, timeout=180) as h:
        plain = {"model": GEMMA, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}
        gens.append(h.post("/v1/completions", json=plain).json()["usage"])
        streamed = {**plain, "max_tokens": 16, "stream": True, "stream_options": {"include_usage": True}}
        gens.append(sse_usage(h.post("/v1/completions", json=streamed).text))  # reuses the cached prefix
        chat = {"model": GEMMA, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 12,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        gens.append(sse_usage(h.post("/v1/chat/completions", json=chat).text))
        long = {"model": GEMMA, "prompt": LONG_PROMPT, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
        gens.append(h.post("/v1/completions", json=long).json()["usage"])
        emb = h.post("/v1/embeddings", json={"model": GEMMA, "input": ["the cat", "a rocket launch"]}).json()
        bad = h.post("/v1/chat/completions", json={"model": GEMMA, "messages": [], "temperature": 9})
        assert bad.status_code == 400
        ok_job, bad_job = pull(h, f"hf.co/{REPO}/{FILE}"), pull(h, "hf.co/org/Missing-GGUF:Q4_K_M")
    assert ok_job["status"] == "succeeded" and bad_job["status"] == "failed", (ok_job, bad_job)
    assert 512 < gens[3]["prompt_tokens"] + gens[3]["completion_tokens"] < 2000
    assert gens[1]["prompt_tokens_details"]["cached_tokens"] > 0
    decode: dict[str, int] = {}
    for u in gens:
        if u["completion_tokens"] > 1:  # decode speed needs two tokens
            b = context_bucket(u["prompt_tokens"] + u["completion_tokens"] - 1)
            decode[b] = decode.get(b, 0) + 1
    return {
        "prompt": sum(u["prompt_tokens"] for u in gens) + emb["usage"]["prompt_tokens"],
        "reused": sum(u["prompt_tokens_details"]["cached_tokens"] for u in gens),
        "completion": sum(u["completion_tokens"] for u in gens),
        "generations": len(gens), "decode": decode, "ok_job": ok_job, "bad_job": bad_job,
    }


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str, ray: bool = False) -> Samples:
    """kronk's samples by (name, labels); from Ray's endpoint: ``ray_`` and Ray's own labels taken off."""
    out: Samples = {}
    for name, labels, value in prometheus.parse(text, "ray_kronk_" if ray else "kronk_"):
        lb = {k: (repr(float(v)) if k == "le" and v != "+Inf" else v) for k, v in labels.items()
              if not (ray and k in RAY_LABELS)}
        out[(name.removeprefix("ray_"), tuple(sorted(lb.items())))] = value
    return out


def rays(url: str) -> Samples:
    return samples(httpx.get(url, timeout=30).text, ray=True)


def ours(url: str) -> Samples:
    return samples(httpx.get(url + "/metrics", timeout=30).text)


def value(s: Samples, name: str, **labels: str) -> float:
    """The sum over series of ``name`` whose labels include ``labels``."""
    return sum(v for (n, lb), v in s.items() if n == name and set(labels.items()) <= set(lb))


def llm_replica(url: str) -> str:
    return httpx.get(url + "/v1/stats", timeout=30).json()["models"][GEMMA]["replica"]


def settled(url: str, t: dict[str, Any]) -> bool:
    """Every replica's numbers of the traffic have reached the board (pushed ~50 ms after each request)."""
    s = ours(url)
    return (value(s, "kronk_completion_tokens_total", model=GEMMA) == t["completion"]
            and value(s, "kronk_prompt_tokens_total", model=GEMMA) == t["prompt"]
            and value(s, "kronk_pull_jobs_total") == 2)


def test_metrics_endpoint_agrees_with_the_responses(app):
    t = app.traffic
    until(lambda: settled(app.url, t), 30, lambda: f"the board to settle: {ours(app.url)}", 0.5)
    rep = llm_replica(app.url)
    s = ours(app.url)
    m = {"model": GEMMA, "replica": rep}
    # every metric is there, with model and replica (and context_bucket) labels
    for spec in specs.SPECS.values():
        if spec in specs.POOL_SPECS:  # this traffic uses no pool model (tests/integration/test_model_pool_serve.py)
            continue
        # counted with speculation on (test_speculative) or once prompts share a prefix (test_engine) only
        if spec in (specs.SPEC_DRAFTED, specs.SPEC_ACCEPTED, specs.SHARED_TOKENS):
            continue
        # by tier: a tier's counter appears once it counted something (checked below against the reused tokens)
        if spec in (specs.PREFIX_HITS, specs.PREFIX_MISSES, specs.PREFIX_TOKENS, specs.PREFIX_EVICTIONS):
            continue
        name = spec.name + ("_count" if spec.kind == "histogram" else "")
        series = [dict(lb) for n, lb in s if n == name]
        assert series, f"{name} missing"
        assert all(set(spec.labels) <= set(lb) for lb in series), (name, series)
        assert any(lb["replica"] for lb in series), name
    # tokens equal the usage totals; TTFT > 0
    assert value(s, "kronk_prompt_tokens_total", **m) == t["prompt"]
    assert value(s, "kronk_prompt_tokens_reused_total", **m) == t["reused"] > 0
    # every reused token came from one prefix cache tier; the slot tier's KV in use is a gauge with bytes
    tiers: dict[str, float] = {}
    for (n, lb), v in s.items():
        if n == "kronk_prefix_cache_tokens_total" and dict(lb).get("model") == GEMMA:
            tiers[dict(lb)["tier"]] = tiers.get(dict(lb)["tier"], 0) + v
    assert sum(tiers.values()) == t["reused"] and tiers.get("slot", 0) > 0, tiers
    assert value(s, "kronk_prefix_cache_bytes", tier="slot", **m) > 0
    assert value(s, "kronk_completion_tokens_total", **m) == t["completion"]
    assert value(s, "kronk_ttft_seconds_count", **m) == t["generations"]
    assert value(s, "kronk_ttft_seconds_sum", **m) > 0
    assert value(s, "kronk_queue_wait_seconds_count", **m) == t["generations"]
    for bucket, n in t["decode"].items():
        assert value(s, "kronk_decode_tokens_per_second_count", context_bucket=bucket, **m) == n, bucket
    assert set(t["decode"]) == {"0-512", "512-2k"}
    assert value(s, "kronk_inter_token_latency_seconds_count", **m) == sum(t["decode"].values())
    # gauges: the two slots' shared pool of 4 x 2048 cells (kv_pool_tokens' default); idle now
    assert value(s, "kronk_kv_cells_total", **m) == 4 * 2048
    assert 0 < value(s, "kronk_kv_cells_used", **m) <= 2 * 2048  # each slot holds at most ctx_size
    assert value(s, "kronk_active_sequences", **m) == 0 and value(s, "kronk_waiting_sequences", **m) == 0
    # requests by endpoint and status (the 400 included), counted by the ingress
    req = "kronk_requests_total"
    assert value(s, req, model=GEMMA, route="/v1/completions", status="200") == 3
    assert value(s, req, model=GEMMA, route="/v1/chat/completions", status="200") == 1
    assert value(s, req, model=GEMMA, route="/v1/chat/completions", status="400") == 1
    assert value(s, req, model=GEMMA, route="/v1/embeddings", status="200") == 1
    assert value(s, req, route="/v1/models/pull", status="200") == 2
    # pulls, counted by the model manager
    ok, bad = t["ok_job"], t["bad_job"]
    assert value(s, "kronk_pull_jobs_total", model=ok["model"], status="succeeded") == 1
    assert value(s, "kronk_pull_jobs_total", model=bad["model"], status="failed") == 1
    assert value(s, "kronk_pull_bytes_total", model=ok["model"]) == len(DATA)
    assert value(s, "kronk_pull_failures_total", model=bad["model"], code=bad["error_code"]) == 1


def test_rays_prometheus_endpoint_has_the_same_numbers(app):
    until(lambda: settled(app.url, app.traffic), 30, "the board to settle")
    last: dict[str, Any] = {}

    def agree() -> bool:
        mine = {k: v for k, v in ours(app.url).items() if not k[0].endswith("_sum")}
        theirs = {k: v for k, v in rays(app.ray_url).items() if not k[0].endswith("_sum")}
        last.update(mine=mine, theirs=theirs)
        return mine == theirs

    def difference() -> str:
        mine, theirs = last["mine"], last["theirs"]
        diff = {k: (mine.get(k), theirs.get(k)) for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)}
        return f"/metrics and Ray's endpoint to agree; they differ in {len(diff)} samples: {list(diff.items())[:10]}"

    until(agree, 60, difference, 1)
    # Ray's _sum of a histogram is made of bucket midpoints; it exists and is positive
    raw = rays(app.ray_url)
    assert value(raw, "kronk_ttft_seconds_sum", model=GEMMA) > 0
    assert value(raw, "kronk_prompt_tokens_total", model=GEMMA, replica=llm_replica(app.url)) \
        == app.traffic["prompt"]


def quantile(s: Samples, name: str, q: float, bounds: tuple[float, ...], **labels: str) -> float | None:
    counts = [value(s, name + "_bucket", le=repr(float(b)), **labels) for b in bounds]
    counts.append(value(s, name + "_bucket", le="+Inf", **labels))
    return Histogram(bounds, [int(c - p) for c, p in zip(counts, [0, *counts[:-1]], strict=True)]).quantile(q)


def test_stats_are_consistent_with_the_metrics(app):
    t = app.traffic
    until(lambda: settled(app.url, t), 30, "the board to settle")
    info = httpx.get(app.url + "/v1/stats", timeout=30).json()["models"][GEMMA]
    s = ours(app.url)
    agg = info["aggregate"]
    m = {"model": GEMMA}
    assert info["replicas"] == 1 and agg["replicas"] == 1 and agg["replica_ids"] == [info["replica"]]
    assert info["stats"]["n_slots"] == 2  # one replica's live engine stats, as before
    tokens = dict(agg["tokens"])
    assert 0 <= tokens.pop("prompt_shared") <= t["reused"]  # copied from another slot: a part of the reused
    assert tokens == {"prompt": t["prompt"], "prompt_reused": t["reused"], "completion": t["completion"]}
    assert agg["tokens"]["prompt"] == value(s, "kronk_prompt_tokens_total", **m)
    assert agg["prefix_cache_reuse_ratio"] == pytest.approx(t["reused"] / t["prompt"], abs=1e-4)
    assert agg["requests"]["total"] == value(s, "kronk_requests_total", **m) == 6
    assert agg["requests"]["errors"] == 1
    assert agg["requests"]["by_route"]["/v1/chat/completions"] == {"200": 1, "400": 1}
    assert agg["ttft_s"]["count"] == value(s, "kronk_ttft_seconds_count", **m) == t["generations"]
    for q in ("p50", "p95"):
        expect = quantile(s, "kronk_ttft_seconds", 0.5 if q == "p50" else 0.95, specs.TTFT.bounds, **m)
        assert agg["ttft_s"][q] == pytest.approx(expect, abs=1e-4) and agg["ttft_s"][q] > 0
    for bucket, n in t["decode"].items():
        d = agg["decode_tok_s"][bucket]
        assert d["count"] == n and d["mean"] > 0
        assert d["p50"] == pytest.approx(quantile(s, "kronk_decode_tokens_per_second", 0.5, specs.DECODE_TPS.bounds,
                                                  context_bucket=bucket, **m), abs=0.01)
    assert agg["kv"]["cells_total"] == value(s, "kronk_kv_cells_total", **m) == 4 * 2048
    assert agg["kv"]["cells_used"] == value(s, "kronk_kv_cells_used", **m)
    assert agg["active"] == 0 and agg["waiting"] == 0


def test_model_ps_shows_the_aggregate(app, tmp_path):
    env = clean_env(tmp_path)
    rows = kronk_json("model", "ps", "--url", app.url, "--json", "--interval", "0.2", env=env)["models"]
    (row,) = [r for r in rows if r["model"] == GEMMA]
    assert row["replicas"] == 1 and row["total_requests"] >= 6
    assert row["ttft_p50_s"] > 0 and row["prefix_reuse"] > 0 and set(row["decode_tok_s"]) == {"0-512", "512-2k"}
