"""Ollama's native API (kronk/api/ollama) with the official ``ollama`` Python client, over real HTTP: chat and
generate (streamed NDJSON and not), options, format, tools, think, the load idiom, tags/show/ps, embed, errors
in Ollama's shape, and pull/copy/delete against the local Hub stand-in."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from kronk.api.app import create_app
from kronk.api.families import HANDLERS
from kronk.api.ollama.names import kronk_names, ollama_name, pick
from kronk.engine import EngineConfig
from kronk.engine.engine import LlamaEngine
from kronk.serving.local import LocalBackend, LocalModelOps
from kronk.serving.pool import LoadPlan, ModelPool
from kronk.serving.service import ModelService
from kronk.settings import Settings
from kronk.store.manager import ModelManager
from tests.helpers import GEMMA, SMOL, http_server
from tests.hubserver import HubServer, make_gguf
from tests.models import smollm_path

WEATHER = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                   "required": ["city"]}}}]
HELLO = [{"role": "user", "content": "Say hello."}]
GREEDY = {"temperature": 0, "num_predict": 6}


@pytest.fixture(scope="module")
def ol(api_url: str) -> ollama.Client:
    return ollama.Client(host=api_url, timeout=120)


def lines(r: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(x) for x in r.text.splitlines() if x.strip()]


# ------------------------------------------------------------------------------------------ chat, generate
def test_chat_is_the_same_turn_as_openai_chat_streamed_or_not(ol, client):
    r = ol.chat(SMOL, messages=HELLO, options=GREEDY)
    ref = client.chat.completions.create(model=SMOL, messages=HELLO, temperature=0, max_tokens=6)
    assert r.model == SMOL and r.message.role == "assistant" and r.done is True
    assert r.message.content == ref.choices[0].message.content
    assert r.done_reason == ref.choices[0].finish_reason  # stop / length
    assert r.eval_count == ref.usage.completion_tokens and r.prompt_eval_count == ref.usage.prompt_tokens
    assert r.total_duration >= r.prompt_eval_duration > 0 and r.eval_duration >= 0 and r.load_duration == 0
    parts = list(ol.chat(SMOL, messages=HELLO, options=GREEDY, stream=True))
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.message.content or "" for p in parts) == r.message.content
    assert parts[-1].eval_count == r.eval_count and parts[-1].done_reason == r.done_reason


def test_stream_is_ndjson_and_the_default(api_url):
    r = httpx.post(api_url + "/api/chat", json={"model": SMOL, "messages": HELLO, "options": GREEDY}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    got = lines(r)
    assert len(got) >= 2 and got[-1]["done"] is True and not any(x["done"] for x in got[:-1])
    assert set(got[-1]) >= {"done_reason", "total_duration", "load_duration", "prompt_eval_count",
                            "prompt_eval_duration", "eval_count", "eval_duration"}


def test_num_predict_cuts_the_answer_and_options_reach_the_sampler(ol):
    r = ol.chat(GEMMA, messages=[{"role": "user", "content": "Tell a story."}],
                options={"temperature": 0, "num_predict": 3, "num_ctx": 999999, "mirostat": 2, "num_keep": 4})
    assert r.eval_count == 3 and r.done_reason == "length"  # num_ctx and unknown options accepted, ignored
    stopped = ol.chat(GEMMA, messages=[{"role": "user", "content": "Tell a story."}],
                      options={"temperature": 0, "num_predict": 6, "stop": [r.message.content[:2]]})
    assert stopped.eval_count < 3 and stopped.done_reason == "stop"


def test_generate_templated_and_raw(ol, client):
    r = ol.generate(SMOL, prompt="Say hello.", options=GREEDY)
    chat = ol.chat(SMOL, messages=HELLO, options=GREEDY)
    assert r.response == chat.message.content and r.done and r.context is None  # context: omitted
    one = {"temperature": 0, "num_predict": 1}
    with_system = ol.generate(SMOL, prompt="Say hello.", system="Answer in French.", options=one)
    chat = ol.chat(SMOL, messages=[{"role": "system", "content": "Answer in French."}, *HELLO], options=one)
    assert with_system.prompt_eval_count == chat.prompt_eval_count != r.prompt_eval_count
    raw = ol.generate(GEMMA, prompt="The capital of France is", raw=True, options=GREEDY)
    ref = client.completions.create(model=GEMMA, prompt="The capital of France is", temperature=0, max_tokens=6)
    assert raw.response == ref.choices[0].text and raw.prompt_eval_count == ref.usage.prompt_tokens
    parts = list(ol.generate(GEMMA, prompt="The capital of France is", raw=True, options=GREEDY, stream=True))
    assert "".join(p.response for p in parts) == raw.response and parts[-1].done


def test_raw_prompt_reads_special_token_markup_as_tokens(ol, client):
    """A raw prompt is the client's own rendering of the template: <|im_start|> is one token (/v1/completions
    reads it as text)."""
    prompt = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    raw = ol.generate(SMOL, prompt=prompt, raw=True, options={"temperature": 0, "num_predict": 1})
    as_text = client.completions.create(model=SMOL, prompt=prompt, temperature=0, max_tokens=1)
    assert raw.prompt_eval_count + 10 < as_text.usage.prompt_tokens


def test_format_json_and_schema_answers_parse(ol):
    r = ol.chat(SMOL, messages=[{"role": "user", "content": "A JSON object about a cat."}], format="json",
                options={"temperature": 0, "num_predict": 32})
    if r.done_reason == "stop":
        assert isinstance(json.loads(r.message.content), dict)
    else:
        assert r.message.content.lstrip().startswith("{")
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}}, "required": ["name"],
              "additionalProperties": False}
    r = ol.chat(SMOL, messages=[{"role": "user", "content": "Name a cat."}], format=schema,
                options={"temperature": 0, "num_predict": 32})
    assert r.done_reason == "stop" and set(json.loads(r.message.content)) == {"name"}


class ForceTool(httpx.HTTPTransport):
    """Adds kronk's tool_choice extension (Ollama has none) to the client's requests, to get a deterministic call
    (a forced call is grammar-constrained) through the official client."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = {**json.loads(request.content), "tool_choice": "required"}
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
        return super().handle_request(httpx.Request(request.method, request.url, headers=headers, json=body))


def test_tool_calls_come_back_as_objects_and_go_back_into_the_template(api_url, ol):
    forced = ollama.Client(host=api_url, timeout=120, transport=ForceTool())
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    r = forced.chat(SMOL, messages=ask, tools=WEATHER, options={"temperature": 0, "num_predict": 40})
    call = r.message.tool_calls[0]
    assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)
    assert set(call.function.arguments) == {"city"} and r.done_reason == "stop"
    parts = list(forced.chat(SMOL, messages=ask, tools=WEATHER, options={"temperature": 0, "num_predict": 40},
                             stream=True))
    streamed = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [(c.function.name, dict(c.function.arguments)) for c in streamed] == \
        [(call.function.name, dict(call.function.arguments))] and parts[-1].done
    # the call and the tool's answer (Ollama ties it by tool_name) reach the template
    history = [*ask, {"role": "assistant", "content": "", "tool_calls": [call.model_dump()]},
               {"role": "tool", "tool_name": "get_weather", "content": '{"temp_c": 21}'}]
    after = ol.chat(SMOL, messages=history, tools=WEATHER, options={"temperature": 0, "num_predict": 2})
    assert after.prompt_eval_count > ol.chat(SMOL, messages=ask, options={"temperature": 0,
                                                                         "num_predict": 2}).prompt_eval_count + 10


def test_the_load_idiom(api_url):
    r = httpx.post(api_url + "/api/generate", json={"model": SMOL}, timeout=60)
    assert r.status_code == 200 and r.json()["done"] is True and r.json()["done_reason"] == "load"
    r = httpx.post(api_url + "/api/chat", json={"model": SMOL, "messages": []}, timeout=60)
    assert r.json()["done_reason"] == "load" and r.json()["message"] == {"role": "assistant", "content": ""}
    r = httpx.post(api_url + "/api/generate", json={"model": SMOL, "keep_alive": 0}, timeout=60)
    assert r.status_code == 409 and "pinned" in r.json()["error"]  # a pinned model cannot be unloaded


# ------------------------------------------------------------------------------------- tags, show, ps, embed
def test_tags_show_and_ps(ol):
    tags = {m.model: m for m in ol.list().models}
    assert {SMOL, GEMMA + ":latest"} <= set(tags)
    smol = tags[SMOL]
    assert smol.details.format == "gguf" and smol.details.family == "smollm2" and smol.size > 0
    assert smol.details.quantization_level == "Q4_1" and smol.modified_at is not None
    shown = ol.show(GEMMA + ":latest")  # the :latest Ollama adds maps back to kronk's name
    assert "completion" in shown.capabilities and shown.details.family == "gemma3"
    assert shown.modelinfo[f"{shown.modelinfo['general.architecture']}.context_length"] == 2048  # served ctx
    assert "temperature" in shown.parameters
    loaded = {m.model: m for m in ol.ps().models}
    assert {SMOL, GEMMA + ":latest"} <= set(loaded) and loaded[SMOL].size_vram == 0
    assert loaded[SMOL].expires_at.year > 3000  # pinned: always loaded
    with pytest.raises(ollama.ResponseError) as e:
        ol.show("nope:1b")
    assert e.value.status_code == 404 and e.value.error == 'model "nope:1b" not found, try pulling it first'


def test_names_map_between_ollama_and_kronk():
    assert ollama_name("gemma3-270m") == "gemma3-270m:latest" and ollama_name(SMOL) == SMOL
    assert ollama_name("hf.co/org/repo:Q4_K_M") == "hf.co/org/repo:Q4_K_M"
    assert kronk_names("smollm2") == ["smollm2", "smollm2:latest"]
    assert pick("gemma3-270m:latest", [GEMMA]) == GEMMA and pick("x:latest", ["x:latest"]) == "x:latest"
    assert pick("smollm2", [SMOL]) is None  # a bare name is :latest, never some other tag


def test_embed_and_the_legacy_embeddings(ol, client):
    r = ol.embed(SMOL, input=["a cat", "a dog"])
    ref = client.embeddings.create(model=SMOL, input=["a cat", "a dog"])
    assert len(r.embeddings) == 2 and r.model == SMOL and r.prompt_eval_count == ref.usage.prompt_tokens
    assert all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(r.embeddings[1], ref.data[1].embedding,
                                                               strict=True))
    assert math.isclose(sum(x * x for x in r.embeddings[0]), 1.0, rel_tol=1e-4)
    legacy = ol.embeddings(SMOL, prompt="a cat")
    assert all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(legacy.embedding, r.embeddings[0], strict=True))
    assert len(ol.embed(SMOL, input="a cat", dimensions=16).embeddings[0]) == 16




# ----------------------------------------------------------------------------------------------- errors
def test_errors_are_ollama_shaped(api_url, ol):
    with pytest.raises(ollama.ResponseError) as e:
        ol.chat("nope", messages=HELLO)
    assert e.value.status_code == 404 and e.value.error == 'model "nope" not found, try pulling it first'
    with pytest.raises(ollama.ResponseError) as e:  # streamed: the status comes before the first line
        list(ol.chat("nope", messages=HELLO, stream=True))
    assert e.value.status_code == 404

    def post(path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(api_url + path, json=body, timeout=60)

    r = post("/api/chat", {"model": SMOL, "messages": HELLO, "options": {"temperature": 7}})
    assert r.status_code == 400 and r.json()["error"].startswith("options.temperature:")
    r = post("/api/chat", {"model": SMOL, "messages": HELLO, "options": {"stop": ["x" * 500]}})
    assert r.status_code == 400 and r.json()["error"].startswith("options.stop:")  # the shared stop limits
    r = post("/api/chat", {"messages": HELLO})
    assert r.status_code == 400 and "model is required" in r.json()["error"]
    r = post("/api/generate", {"model": SMOL, "prompt": "x", "suffix": "y"})
    assert r.status_code == 400 and "suffix" in r.json()["error"]
    r = post("/api/generate", {"model": SMOL, "prompt": "x", "template": "{{ .Prompt }}"})
    assert r.status_code == 400 and "template" in r.json()["error"]
    r = post("/api/chat", {"model": SMOL, "format": "yaml", "messages": HELLO})
    assert r.status_code == 400 and r.json()["error"].startswith("format")
    r = post("/api/chat", {"model": SMOL, "messages": [{"role": "user", "content": "?", "images": ["aGk="]}]})
    assert r.status_code == 400 and "text only" in r.json()["error"]
    with pytest.raises(ollama.ResponseError) as e:
        ol.chat(SMOL, messages=HELLO, think=True)
    assert e.value.status_code == 400 and e.value.error == f'"{SMOL}" does not support thinking'
    r = httpx.post(api_url + "/api/chat", content=b"{", headers={"content-type": "application/json"})
    assert r.status_code == 400 and isinstance(r.json()["error"], str)
    assert httpx.get(api_url + "/api/chat").status_code == 405 and "error" in httpx.get(api_url + "/api/chat").json()


def test_a_mid_stream_failure_is_a_last_error_line():
    from kronk.api.ollama.routes import WIRE
    from kronk.serving.items import Failure

    assert json.loads(WIRE.stream_error(Failure(500, "server_error", "boom"))) == {"error": "boom"}
    assert WIRE.error_body(Failure(404, "x", "gone")) == {"error": "gone"}


def test_version_and_probes(api_url, ol):
    v = httpx.get(api_url + "/api/version").json()["version"]
    assert tuple(int(x) for x in v.split(".")) >= (0, 9, 0)
    assert httpx.head(api_url + "/").status_code == 200
    assert httpx.get(api_url + "/").text == "Ollama is running"


# ---------------------------------------------------- a pool model (a small context): load, unload, truncate
class FakeStore:
    """The model manager's calls the routes make, for one installed model m1."""

    async def call(self, method: str, *args: Any) -> Any:
        return {"list_models": [{"name": "m1", "created_at": "2026-01-01T00:00:00"}], "offline_models": [],
                "catalog": []}[method]


@pytest.fixture(scope="module")
def pool_url() -> Iterator[str]:
    """A pool that serves m1: SmolLM2 with an embedding context of 64 tokens (one engine, kept across loads)."""
    engine = LlamaEngine(EngineConfig(batch_invariant=True,
                                      model_path=smollm_path(), name="m1", parallel=1, ctx_size=512,
                                      embedding_ctx=64))
    svc = ModelService(engine, "m1", HANDLERS)
    pool = ModelPool(lambda model, plan: svc, lambda model, free: LoadPlan(1, {"ctx_size": 512}), budget_bytes=10,
                     close=lambda s: None)
    try:
        with http_server(create_app(LocalBackend({}, ops=FakeStore, pool=pool))) as url:
            yield url
    finally:
        engine.close()


def test_load_and_unload_a_pool_model(pool_url):
    c = ollama.Client(host=pool_url, timeout=60)
    assert c.ps().models == []
    r = httpx.post(pool_url + "/api/generate", json={"model": "m1:latest", "keep_alive": "10m"}, timeout=60)
    assert r.json()["done_reason"] == "load" and r.json()["model"] == "m1:latest"
    (m,) = c.ps().models
    assert m.model == "m1:latest" and m.size == 1 and 500 < m.expires_at.timestamp() - time.time() <= 600
    assert c.chat("m1", messages=HELLO, options={"temperature": 0, "num_predict": 2}).done
    r = httpx.post(pool_url + "/api/chat", json={"model": "m1", "keep_alive": 0}, timeout=60)
    assert r.json()["done_reason"] == "unload" and c.ps().models == []


def test_embed_truncates_a_long_input_unless_told_not_to(pool_url):
    c = ollama.Client(host=pool_url, timeout=60)
    long = "cat " * 100  # more tokens than the embedding context (64)
    with pytest.raises(ollama.ResponseError) as e:
        c.embed("m1", input=long, truncate=False)
    assert e.value.status_code == 400 and "context length is 64 tokens" in e.value.error
    r = c.embed("m1", input=["a cat", long])
    assert len(r.embeddings) == 2 and r.prompt_eval_count <= 64 + 8
    head = c.embed("m1", input=[long]).embeddings[0]
    assert all(math.isclose(x, y, abs_tol=1e-5) for x, y in zip(head, r.embeddings[1], strict=True))


# ------------------------------------------------------------------------ pull, copy, delete (Hub stand-in)
REPO, FILE = "org/Tiny-GGUF", "Tiny-Q4_K_M.gguf"


@pytest.fixture
def hub_app(tmp_path: Path, no_hub_env: None) -> Iterator[tuple[str, Path]]:
    hub = HubServer(chunk_size=64 * 1024)
    hub.add_repo(REPO, {FILE: make_gguf(400_000, seed=7)})
    models = tmp_path / "models"
    with hub:
        settings = Settings(home=tmp_path / "home", models_dir=models, hf_endpoint=hub.url)
        manager = ModelManager(settings.to_args())
        with http_server(create_app(LocalBackend({}, ops=lambda: LocalModelOps(manager)))) as url:
            yield url, models


def test_pull_copy_and_delete(hub_app):
    url, models = hub_app
    c = ollama.Client(host=url, timeout=60)
    name = f"hf.co/{REPO}:Q4_K_M"
    progress = list(c.pull(name, stream=True))
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "verifying sha256 digest" in statuses
    pulling = [p for p in progress if p.status.startswith("pulling ") and p.total]
    assert pulling and pulling[-1].completed == pulling[-1].total == 400_000 and pulling[-1].digest == FILE
    assert c.pull(name).status == "success"  # present: at once
    assert [m.model for m in c.list().models] == [name]

    assert c.copy(name, "tiny:latest").status == "success"
    assert sorted(m.model for m in c.list().models) == sorted([name, "tiny:latest"])
    files = sorted(models.rglob(FILE))
    assert len(files) == 2 and files[0].stat().st_ino == files[1].stat().st_ino  # the same file, twice named
    with pytest.raises(ollama.ResponseError) as e:
        c.copy(name, "smollm2:135m")  # a catalog model's name
    assert e.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as e:
        c.copy(name, "tiny")
    assert e.value.status_code == 409

    assert c.delete(name).status == "success"
    assert [m.model for m in c.list().models] == ["tiny:latest"]
    assert (next(models.rglob(FILE))).stat().st_size == 400_000  # the copy keeps its file
    with pytest.raises(ollama.ResponseError) as e:
        c.delete(name)
    assert e.value.status_code == 404 and "not found" in e.value.error


def test_pull_errors(hub_app):
    url, _ = hub_app
    c = ollama.Client(host=url, timeout=60)
    with pytest.raises(ollama.ResponseError) as e:
        c.pull("hf.co/org/Nope-GGUF:Q4_K_M")
    assert e.value.status_code == 404 and "not found" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:  # streamed: an error line after "pulling manifest"
        list(c.pull("hf.co/org/Nope-GGUF:Q4_K_M", stream=True))
    assert "not found" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        c.pull("no-such-model:7b")
    assert e.value.status_code == 404 and "not in the catalog" in e.value.error
