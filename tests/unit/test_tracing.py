"""OpenTelemetry spans of one streamed request and of a pull, captured by an in-memory exporter.

The app runs in-process (create_app over a LocalBackend, through Starlette's TestClient) on the
real default model, so the spans come from the same code as in the Serve app: the middleware's
HTTP span, the route, the model service's generate span and its phases, the SSE stream write.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from kronk.api.app import create_app
from kronk.api.families import HANDLERS
from kronk.engine import EngineConfig
from kronk.engine.engine import LlamaEngine
from kronk.security.access import Access
from kronk.serving.local import LocalBackend
from kronk.serving.service import ModelService
from kronk.settings import Settings
from kronk.store import ModelStore, PullJobManager
from kronk.telemetry import tracing
from kronk.telemetry.metrics import Recorder
from tests.helpers import sse_usage
from tests.hubserver import HubServer, make_gguf
from tests.models import gemma_path

pytestmark = pytest.mark.timeout(180)

MODEL = "gemma3-270m"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    try:
        yield exporter
    finally:
        tracing.disable()
        provider.shutdown()


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    engine = LlamaEngine(EngineConfig(batch_invariant=True,
                                      model_path=gemma_path(), name=MODEL, parallel=2, ctx_size=1024,
                                      chat_template="gemma"))
    try:
        settings = Settings(home=tmp_path_factory.mktemp("home"))
        app = create_app(LocalBackend.of_services({MODEL: ModelService(engine, MODEL, HANDLERS)}, settings),
                         access=Access(allowed_hosts=["testserver"]))  # TestClient's Host
        with TestClient(app) as c:
            yield c
    finally:
        engine.close()


def by_name(exported) -> dict:
    out = {}
    for s in exported:
        assert s.name not in out, f"two spans named {s.name}"
        out[s.name] = s
    return out


def within(child, parent, slack_ns: int = 5_000_000) -> bool:
    return child.start_time >= parent.start_time - slack_ns and child.end_time <= parent.end_time + slack_ns


def test_span_tree_of_one_streamed_request_under_an_incoming_traceparent(client, spans):
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 12, "temperature": 0,
            "stream": True}
    client.post("/v1/completions", json=body)  # warm the slot: the traced request reuses its prefix
    spans.clear()
    r = client.post("/v1/completions", json=body, headers={"traceparent": TRACEPARENT, "x-request-id": "req-42"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-42"
    usage = sse_usage(r.text)

    s = by_name(spans.get_finished_spans())
    assert set(s) == {"POST /v1/completions", "kronk.route", "kronk.generate", "kronk.first_token",
                      "kronk.queue_wait", "kronk.prefill", "kronk.decode", "kronk.stream_write"}
    assert {sp.context.trace_id for sp in s.values()} == {int(TRACE_ID, 16)}

    http = s["POST /v1/completions"]
    assert http.kind == SpanKind.SERVER
    assert http.parent is not None and http.parent.span_id == int(PARENT_ID, 16) and http.parent.is_remote
    assert http.attributes["http.request.method"] == "POST"
    assert http.attributes["http.route"] == "/v1/completions"
    assert http.attributes["http.response.status_code"] == 200
    assert http.attributes["kronk.request_id"] == "req-42"
    assert http.attributes["kronk.model"] == MODEL

    def parent_of(name: str) -> str:
        pid = s[name].parent.span_id
        return next(n for n, sp in s.items() if sp.context.span_id == pid)

    assert parent_of("kronk.route") == http.name
    assert parent_of("kronk.generate") == http.name
    assert parent_of("kronk.stream_write") == http.name
    assert parent_of("kronk.first_token") == "kronk.generate"
    assert parent_of("kronk.queue_wait") == "kronk.first_token"
    assert parent_of("kronk.prefill") == "kronk.first_token"
    assert parent_of("kronk.decode") == "kronk.generate"

    route = s["kronk.route"].attributes
    assert route["kronk.model"] == MODEL and route["kronk.endpoint"] == "completions" and route["kronk.stream"]

    gen = s["kronk.generate"].attributes
    assert gen["kronk.model"] == MODEL and gen["kronk.endpoint"] == "completions"
    assert gen["kronk.request_id"] == "req-42"
    assert gen["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert gen["gen_ai.usage.output_tokens"] == usage["completion_tokens"] == 12
    assert gen["kronk.finish_reason"] == "length" and gen["kronk.context_bucket"] == "0-512"

    prefill = s["kronk.prefill"].attributes
    assert prefill["kronk.prompt_tokens"] == usage["prompt_tokens"]
    assert prefill["kronk.reused_tokens"] == usage["prompt_tokens_details"]["cached_tokens"] > 0
    assert prefill["kronk.prefill_tokens"] == usage["prompt_tokens"] - prefill["kronk.reused_tokens"]
    assert s["kronk.first_token"].attributes["kronk.ttft_s"] > 0
    assert s["kronk.queue_wait"].attributes["kronk.queue_s"] >= 0
    decode = s["kronk.decode"].attributes
    assert decode["kronk.completion_tokens"] == 12 and decode["kronk.decode_tok_s"] > 0
    assert decode["kronk.inter_token_latency_s"] == pytest.approx(1 / decode["kronk.decode_tok_s"])
    write = s["kronk.stream_write"].attributes
    assert write["kronk.items"] >= 2 and write["kronk.chars"] == len(r.text)

    # phases sit inside their parents and follow each other
    for child in ("kronk.route", "kronk.generate", "kronk.stream_write"):
        assert within(s[child], http), child
    for child in ("kronk.first_token", "kronk.decode"):
        assert within(s[child], s["kronk.generate"]), child
    for child in ("kronk.queue_wait", "kronk.prefill"):
        assert within(s[child], s["kronk.first_token"]), child
    assert s["kronk.queue_wait"].end_time == s["kronk.prefill"].start_time
    assert s["kronk.prefill"].end_time == s["kronk.first_token"].end_time == s["kronk.decode"].start_time


def test_without_traceparent_the_http_span_is_a_root_and_errors_are_marked(client, spans):
    r = client.post("/v1/chat/completions", json={"model": MODEL, "messages": [], "temperature": 9})
    assert r.status_code == 400
    s = by_name(spans.get_finished_spans())
    http = s["POST /v1/chat/completions"]
    assert http.parent is None
    assert http.attributes["http.response.status_code"] == 400
    assert http.attributes["kronk.model"] == MODEL  # a served model: its 4xx are labelled with it
    assert not s["kronk.route"].status.is_ok
    assert "kronk.generate" not in s


def test_tracing_is_off_by_default_and_costs_nothing(client):
    assert not tracing.enabled()
    assert tracing.start_span("x") is None and tracing.carrier() == {}
    with tracing.span("x") as sp:
        assert sp is None
    assert not tracing.wanted_by_env({})
    assert not tracing.wanted_by_env({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"})
    assert tracing.wanted_by_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing.wanted_by_env({"OTEL_TRACES_EXPORTER": "otlp"})
    assert not tracing.wanted_by_env({"KRONK_OTEL": "1"})  # kronk's own switch is a setting, not read here
    r = client.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2},
                    headers={"x-request-id": "bad id with spaces"})
    assert r.status_code == 200 and len(r.headers["x-request-id"]) == 32  # replaced by a fresh one


def test_pull_spans_resolve_download_verify_under_the_callers_trace(tmp_path: Path, spans):
    data = make_gguf(300_000)
    server = HubServer(chunk_size=64 * 1024)
    server.add_repo("org/Tiny-GGUF", {"Tiny-Q4_K_M.gguf": data})
    with server:
        store = ModelStore(Settings(home=tmp_path / "home", models_dir=tmp_path / "models", hf_endpoint=server.url),
                           retries=1, backoff_s=0.01)
        rec = Recorder("manager", "model-manager", use_sink=False)
        jobs = PullJobManager(store=store, recorder=rec)
        job = jobs.wait(jobs.start("hf.co/org/Tiny-GGUF:Q4_K_M", trace={"traceparent": TRACEPARENT}).id, 60)
        assert job.status == "succeeded"
        bad = jobs.wait(jobs.start("hf.co/org/Missing-GGUF:Q4_K_M").id, 60)
        assert bad.status == "failed"

    done = spans.get_finished_spans()
    pulls = [sp for sp in done if sp.name == "kronk.pull"]
    ok = next(sp for sp in pulls if sp.attributes["kronk.pull.status"] == "succeeded")
    assert ok.context.trace_id == int(TRACE_ID, 16) and ok.parent.span_id == int(PARENT_ID, 16)
    assert ok.attributes["kronk.model"] == job.model and ok.attributes["kronk.pull.bytes"] == len(data)
    phases = sorted((sp for sp in done if sp.parent is not None and sp.parent.span_id == ok.context.span_id),
                    key=lambda sp: sp.start_time)
    names = [sp.name for sp in phases]
    assert names[0] == "kronk.pull.resolve" and "kronk.pull.download" in names
    assert names[-1] == "kronk.pull.verify"
    assert next(sp for sp in phases if sp.name == "kronk.pull.download").attributes["kronk.pull.file"] \
        == "Tiny-Q4_K_M.gguf"
    failed = next(sp for sp in pulls if sp.attributes["kronk.pull.status"] == "failed")
    assert failed.parent is None and not failed.status.is_ok
    assert failed.attributes["kronk.pull.error_code"] == bad.error_code

    series = {(x["name"], tuple(sorted(x["labels"].items()))): x.get("value") for x in rec.store.series()}
    assert series[("kronk_pull_jobs_total", (("model", job.model), ("replica", "model-manager"),
                                             ("status", "succeeded")))] == 1
    assert series[("kronk_pull_bytes_total", (("model", job.model), ("replica", "model-manager")))] == len(data)
    assert series[("kronk_pull_failures_total", (("code", bad.error_code), ("model", bad.model),
                                                 ("replica", "model-manager")))] == 1


@pytest.mark.parametrize("given", [None, "client-id-7"])
def test_one_request_id_in_the_header_the_response_and_the_spans(client, spans, given):
    headers = {"x-request-id": given} if given else {}
    r = client.post("/v1/chat/completions", headers=headers, json={
        "model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    assert rid == given if given else len(rid) == 32  # the client's id is kept, else one is made
    assert r.json()["id"] == f"chatcmpl-{rid}"
    s = by_name(spans.get_finished_spans())
    assert s["POST /v1/chat/completions"].attributes["kronk.request_id"] == rid
    assert s["kronk.generate"].attributes["kronk.request_id"] == rid
