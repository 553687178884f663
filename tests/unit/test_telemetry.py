"""Context buckets, histograms, recorders, aggregation across replicas, Prometheus text, the middleware."""

from __future__ import annotations

import random

import pytest
from fastapi.testclient import TestClient

from kronk.api.app import create_app
from kronk.engine.protocol import EngineStats, Timings, Usage
from kronk.security.access import Access
from kronk.serving.local import LocalBackend
from kronk.settings import Settings
from kronk.telemetry import prometheus, specs
from kronk.telemetry.board import MemoryKV, Publisher, StatsBoard, snapshot_key
from kronk.telemetry.buckets import BUCKET_LABELS, context_bucket
from kronk.telemetry.metrics import (
    GenerationNumbers,
    Recorder,
    metrics_sink,
    set_metrics_sink,
)
from kronk.telemetry.stats import Histogram, summarize
from tests.waiting import until


def test_context_buckets_edges():
    assert [context_bucket(n) for n in (0, 512, 513, 2048, 2049, 8192, 8193, 32768, 32769, 10**6)] == [
        "0-512", "0-512", "512-2k", "512-2k", "2k-8k", "2k-8k", "8k-32k", "8k-32k", "32k+", "32k+"]
    assert BUCKET_LABELS == ("0-512", "512-2k", "2k-8k", "8k-32k", "32k+")


def test_histogram_quantiles_like_prometheus():
    h = Histogram((1.0, 2.0, 4.0))
    for v in (0.5, 1.0, 1.5, 1.5, 3.0, 10.0):  # le semantics: 1.0 falls in the first bucket
        h.observe(v)
    assert h.counts == [2, 2, 1, 1] and h.count == 6 and h.sum == pytest.approx(17.5)
    assert h.quantile(0.5) == pytest.approx(1.0 + (2.0 - 1.0) * (3 - 2) / 2)  # rank 3 in (1, 2]
    assert h.quantile(1 / 6) == pytest.approx(0.5)  # rank 1 in (0, 1]
    assert h.quantile(0.99) == 4.0  # the +Inf bucket answers the last finite bound
    assert Histogram((1.0,)).quantile(0.5) is None


def test_histograms_merge_exactly_across_replicas():
    rnd = random.Random(7)
    values = [rnd.uniform(0, 3) for _ in range(500)]
    a, b, both = (Histogram(specs.TTFT.bounds) for _ in range(3))
    for i, v in enumerate(values):
        (a if i % 3 else b).observe(v)
        both.observe(v)
    a.add(b)
    assert a.counts == both.counts and a.sum == pytest.approx(both.sum)
    assert a.quantile(0.95) == both.quantile(0.95)
    with pytest.raises(ValueError):
        a.add(Histogram((1.0,)))


def test_generation_numbers():
    n = GenerationNumbers.of(Usage(prompt_tokens=100, completion_tokens=11, cached_tokens=60),
                             Timings(queue_s=0.01, prefill_s=0.2, ttft_s=0.21, decode_s=0.5, context_tokens=3000))
    assert n.prefill_tokens == 40 and n.prefill_tok_s == pytest.approx(200.0)
    assert n.decode_tok_s == pytest.approx(20.0) and n.inter_token_latency_s == pytest.approx(0.05)
    assert n.context_bucket == "2k-8k"
    one = GenerationNumbers.of(Usage(5, 1, 5), Timings(0.0, 0.0, 0.1, 0.0, 6))
    assert one.decode_tok_s is None and one.inter_token_latency_s is None and one.prefill_tok_s is None


def engine_stats(used: int, active: int = 0, tiers: dict | None = None) -> EngineStats:
    return EngineStats(model="m", n_slots=4, n_ctx_slot=1024, active=active, waiting=1, kv_cells_used=used,
                       kv_cells_total=4096, kv_bytes=1, prompt_tokens=0, prompt_tokens_reused=0,
                       completion_tokens=0, requests=0, slots=[], prefix_cache=tiers or {})


def test_prefix_cache_tiers_reach_prometheus_and_the_summary():
    """Per tier and model: counters since the engine started (a series once above 0), bytes as a gauge; a later
    sample adds only what is new."""
    rec = Recorder("llm", "r1", model="m", use_sink=False)
    tier = {"hits": 2, "misses": 1, "tokens": 512, "evictions": 0, "writes": 1, "bytes": 4096, "entries": 1}
    rec.on_engine_stats(engine_stats(10, tiers={"slot": {**tier, "tokens": 40}, "ram": tier}))
    rec.on_engine_stats(engine_stats(10, tiers={"slot": {**tier, "tokens": 40}, "ram": {**tier, "hits": 3,
                                                                                     "tokens": 768}}))
    samples = prometheus.parse(prometheus.render([rec.snapshot()]))
    value = {(n, tuple(sorted(lb.items()))): v for n, lb, v in samples}
    ram = (("model", "m"), ("replica", "r1"), ("tier", "ram"))
    assert value[("kronk_prefix_cache_hits_total", ram)] == 3
    assert value[("kronk_prefix_cache_tokens_total", ram)] == 768
    assert value[("kronk_prefix_cache_bytes", ram)] == 4096
    assert ("kronk_prefix_cache_evictions_total", ram) not in value  # never above 0
    m = summarize([rec.snapshot()])["m"]
    assert m["prefix_cache"]["ram"] == {"hits": 3, "misses": 1, "tokens": 768, "evictions": 0, "bytes": 4096}
    assert m["prefix_cache"]["slot"]["tokens"] == 40


def replica(tag: str, gens: list[tuple[int, int, int, float, int]]) -> Recorder:
    rec = Recorder("llm", tag, model="m", use_sink=False)
    for prompt, cached, completion, decode_s, ctx in gens:
        rec.on_generation(Usage(prompt, completion, cached), Timings(0.001, 0.05, 0.06, decode_s, ctx))
    rec.on_engine_stats(engine_stats(used=100 * len(gens), active=1))
    return rec


def test_summary_aggregates_every_replica():
    r1 = replica("r1", [(100, 0, 21, 0.5, 121), (100, 90, 11, 0.25, 3000)])
    r2 = replica("r2", [(50, 10, 5, 0.1, 60)])
    ingress = Recorder("ingress", "i1", use_sink=False)
    ingress.on_http_request("/v1/completions", 200, "m")
    ingress.on_http_request("/v1/completions", 200, "m")
    ingress.on_http_request("/v1/chat/completions", 400, "m")
    ingress.on_http_request("/v1/chat/completions", 404, None)  # not a served model: not counted for m
    manager = Recorder("manager", "model-manager", use_sink=False)
    manager.on_pull("m", "failed", 0, "hub_error")
    agg = summarize([r1.snapshot(), r2.snapshot(), ingress.snapshot(), manager.snapshot()])
    assert set(agg) == {"m"}
    m = agg["m"]
    assert m["replicas"] == 2 and m["replica_ids"] == ["r1", "r2"]
    assert m["requests"] == {"total": 3, "errors": 1, "by_route": {"/v1/completions": {"200": 2},
                                                                      "/v1/chat/completions": {"400": 1}}}
    assert m["tokens"] == {"prompt": 250, "prompt_reused": 100, "prompt_shared": 0, "completion": 37}
    assert m["prefix_cache_reuse_ratio"] == pytest.approx(0.4)
    assert m["ttft_s"]["count"] == 3 and m["ttft_s"]["p50"] == pytest.approx(0.0625, abs=1e-4)
    assert m["decode_tok_s"]["0-512"]["count"] == 2 and m["decode_tok_s"]["2k-8k"]["count"] == 1
    assert m["decode_tok_s"]["0-512"]["mean"] == pytest.approx((40 + 40) / 2)
    assert m["kv"] == {"cells_used": 300, "cells_total": 8192, "usage": pytest.approx(300 / 8192, abs=1e-4)}
    assert m["active"] == 2 and m["waiting"] == 2
    assert m["engine"]["n_slots"] == 8 and m["engine"]["kv_cells_total"] == 8192


def test_prometheus_text_matches_the_snapshots():
    r1 = replica("r1", [(100, 0, 21, 0.5, 121), (30, 0, 3, 0.02, 33)])
    text = prometheus.render([r1.snapshot()])
    samples = prometheus.parse(text)
    assert {n for n, _, _ in samples} >= {
        "kronk_prompt_tokens_total", "kronk_ttft_seconds_bucket", "kronk_ttft_seconds_count",
        "kronk_decode_tokens_per_second_bucket", "kronk_kv_cells_used", "kronk_kv_cells_total"}
    value = {(n, tuple(sorted(lb.items()))): v for n, lb, v in samples}
    base = (("model", "m"), ("replica", "r1"))
    assert value[("kronk_prompt_tokens_total", base)] == 130
    assert value[("kronk_completion_tokens_total", base)] == 24
    assert value[("kronk_kv_cells_used", base)] == 200
    assert value[("kronk_ttft_seconds_count", base)] == 2
    inf = (("context_bucket", "0-512"), ("le", "+Inf"), *base)
    assert value[("kronk_decode_tokens_per_second_bucket", tuple(sorted(inf)))] == 2
    # cumulative buckets
    buckets = sorted((float(lb["le"]), v) for n, lb, v in samples if n == "kronk_ttft_seconds_bucket")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)
    assert "reused" in text and "# TYPE kronk_ttft_seconds histogram" in text


def test_counters_skip_zero_and_store_labels():
    rec = Recorder("llm", "r", model="m", use_sink=False)
    rec.inc(specs.PROMPT_TOKENS, 0)
    assert rec.store.series() == []
    rec.inc(specs.REQUESTS, 1, route="/x", status=200, model="other")
    (s,) = rec.store.series()
    assert s["labels"] == {"model": "other", "replica": "r", "route": "/x", "status": "200"}


def test_board_keeps_the_latest_snapshot_per_replica_and_forgets_silent_ones():
    kv = MemoryKV()
    board = StatsBoard(kv, ttl_s=-1.0)
    snap = Recorder("llm", "r1", model="m", use_sink=False).snapshot()
    board.put(snapshot_key(snap), snap)
    assert board.all() == []  # older than the TTL: gone, and deleted from the store
    assert kv.list_keys() == []
    board.ttl_s = 60
    board.put(snapshot_key(snap), snap)
    board.put(snapshot_key(snap), {**snap, "time": 1.0})
    kv.put("garbage", b"not json")  # an entry the board cannot read is dropped, not fatal
    (got,) = board.all()
    assert got["time"] == 1.0 and got["series"] == snap["series"] and kv.list_keys() == [snapshot_key(snap)]
    board.drop(snapshot_key(snap))
    assert board.all() == []


def test_publisher_pushes_soon_after_a_poke_and_its_entry_goes_when_closed():
    board = StatsBoard(MemoryKV())
    rec = Recorder("llm", "r1", model="m", use_sink=False)
    pub = Publisher(rec.snapshot, interval_s=60.0, board=board)
    try:
        until(lambda: len(board.all()) == 1, 10, "the first push, at start", 0.02)
        rec.inc(specs.PROMPT_TOKENS, 5)
        pub.poke()
        until(lambda: any(s["value"] == 5 for s in board.all()[0]["series"]), 10, "the push after the poke", 0.02)
    finally:
        pub.close()
    assert board.all() == []


class ListSink:
    """A metrics sink that keeps what it is given (as Ray's metrics would get it, deployments/metrics.py)."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.got: list[tuple[str, str, float, dict[str, str]]] = []

    def record(self, spec, method, value, tags):
        if self.fail:
            raise RuntimeError("the backend is gone")
        self.got.append((spec.name, method, value, tags))


@pytest.fixture
def sink():
    old = metrics_sink()
    sink = ListSink()
    set_metrics_sink(sink)
    yield sink
    set_metrics_sink(old)


def test_recorders_also_record_into_the_installed_sink(sink):
    rec = Recorder("llm", "r1", model="m")  # made before the sink would be installed is fine: looked up per value
    rec.inc(specs.PROMPT_TOKENS, 3)
    rec.set(specs.ACTIVE, 2)
    rec.observe(specs.TTFT, 0.5)
    assert [(n, m, v) for n, m, v, _ in sink.got] == [
        (specs.PROMPT_TOKENS.name, "inc", 3), (specs.ACTIVE.name, "set", 2), (specs.TTFT.name, "observe", 0.5)]
    assert all(tags["model"] == "m" and tags["replica"] == "r1" for *_, tags in sink.got)
    Recorder("llm", "r2", use_sink=False).inc(specs.PROMPT_TOKENS, 1)  # a recorder that keeps its numbers
    assert len(sink.got) == 3


def test_a_failing_sink_is_turned_off_and_the_store_keeps_counting(sink):
    sink.fail = True
    rec = Recorder("llm", "r1", model="m")
    rec.inc(specs.PROMPT_TOKENS, 3)
    assert rec.use_sink is False
    sink.fail = False
    rec.inc(specs.PROMPT_TOKENS, 4)
    assert sink.got == []
    assert [s["value"] for s in rec.store.series() if s["name"] == specs.PROMPT_TOKENS.name] == [7]


def test_middleware_counts_requests_and_keeps_request_ids(tmp_path):
    fresh_recorder = Recorder("ingress", "test", use_sink=False)
    app = create_app(LocalBackend.of_services({}, Settings(home=tmp_path)), recorder=fresh_recorder,
                     access=Access(allowed_hosts=["testserver"]))  # TestClient's Host
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
        r = c.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
                   headers={"x-request-id": "client-id-1"})
        assert r.status_code == 404 and r.headers["x-request-id"] == "client-id-1"
        assert c.get("/no/such/path").status_code == 404
        assert c.post("/v1/completions", content=b"not json",
                      headers={"content-type": "application/json"}).status_code == 400
        metrics = c.get("/metrics")
        stats = c.get("/v1/stats").json()
    assert metrics.headers["content-type"].startswith("text/plain")
    counted = {(s["labels"]["route"], s["labels"]["status"], s["labels"]["model"]): s["value"]
               for s in fresh_recorder.store.series()}
    # /health and /metrics are not counted; an unknown model is not a label value
    assert counted == {("/v1/chat/completions", "404", ""): 1, ("unmatched", "404", ""): 1,
                       ("/v1/completions", "400", ""): 1, ("/v1/stats", "200", ""): 1}
    assert 'route="/v1/chat/completions"' in metrics.text and 'status="404"' in metrics.text
    assert stats == {"models": {}}
