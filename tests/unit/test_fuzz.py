"""Fuzz the served OpenAPI schema with schemathesis: whatever a client sends, the answer is never a 5xx.

It runs against the in-process app over the real small models (tests/conftest.py ``api_url``), bounded and
deterministic: schemathesis' coverage phase (boundary values and every kind of invalid value, field by field, with
no randomness) and its fuzzing phase (at most MAX_EXAMPLES cases per operation and mode, derandomized). The POST
routes document their bodies from the pydantic requests (kronk/api/schemas.py: json_body), so the fuzzer explores
the fields. To reach the replica rather than stop at the first 400, the test narrows the schema it fuzzes: ``model``
is one of the served models, and a chat message has content (which the schema leaves optional: only an assistant
message may go without), and ``tool_choice`` names no function (a named one must be among the tools). A token
limit that the context could hold is lowered to a few tokens, so that the run stays short (a limit past the
context is kept: it must be a 400). Read-only operations only: nothing that
downloads (pulls) or changes the store or the keys.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error

from tests.helpers import GEMMA, SMOL

MAX_EXAMPLES = 20
MAX_NEW_TOKENS = 2
N_CTX = 2048  # tests/conftest.py: both models' slots
GENERATING = ("/v1/chat/completions", "/v1/completions")
MODEL_POSTS = (*GENERATING, "/v1/embeddings")
# The other families' model routes, fuzzed with fewer examples each (the suite's time): their token limits
# (TOKEN_LIMITS) are bounded as GENERATING's are.
FAMILY_POSTS = ("/v1/messages", "/v1/messages/count_tokens", "/v1/responses", "/api/chat", "/api/generate",
                "/api/embed", "/v1/tokenize", "/v1/detokenize", "/v1/apply-template", "/v1/rerank")
FAMILY_EXAMPLES = 12
TOKEN_LIMITS = {"/v1/chat/completions": ("max_completion_tokens", "max_tokens"), "/v1/completions": ("max_tokens",),
                "/v1/messages": ("max_tokens",), "/v1/responses": ("max_output_tokens",)}
OLLAMA_GENERATING = ("/api/chat", "/api/generate")
# Read-only operations that need no model named (GET, by HTTP's rules), fuzzed in positive mode only.
READS = ("/health", "/v1/stats", "/v1/models", "/v1/models/{model_id}", "/v1/models/pull",
         "/v1/models/pull/{job_id}", "/v1/store/models", "/v1/catalog")
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


def body_schema(raw: dict[str, Any], path: str) -> dict[str, Any]:
    return raw["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]


@pytest.fixture(scope="module")
def fuzz_schema(api_url: str) -> Any:
    raw = httpx.get(api_url + "/openapi.json", timeout=30).json()
    for path in (*MODEL_POSTS, *FAMILY_POSTS):
        props = body_schema(raw, path)["properties"]
        if "model" in props:
            props["model"] = {"type": "string", "enum": [GEMMA, SMOL]}
    chat = body_schema(raw, "/v1/chat/completions")["properties"]
    chat["tool_choice"] = {"anyOf": [{"enum": ["auto", "none", "required"]}, {"type": "null"}]}
    message = chat["messages"]["items"]
    message["required"] = ["role", "content"]
    message["properties"]["content"]["anyOf"] = [a for a in message["properties"]["content"]["anyOf"]
                                                 if a.get("type") != "null"]
    return schemathesis.openapi.from_dict(raw)


def test_the_post_routes_document_their_request_bodies(api_url):
    paths = httpx.get(api_url + "/openapi.json", timeout=30).json()["paths"]
    for path, field in [("/v1/chat/completions", "messages"), ("/v1/completions", "prompt"),
                        ("/v1/embeddings", "input"), ("/v1/models/pull", "model")]:
        body = paths[path]["post"]["requestBody"]
        schema = body["content"]["application/json"]["schema"]
        assert body["required"] and field in schema["properties"] and field in schema["required"], path
        assert "$ref" not in str(schema) and "$defs" not in str(schema)  # inlined: the document has no $defs


def bounded(case: Any) -> None:
    """A token limit the context could hold (or none: the rest of it) becomes MAX_NEW_TOKENS; one past the
    context is kept, to be refused."""
    body, path = case.body, case.operation.path
    if not isinstance(body, dict):
        return
    if path in OLLAMA_GENERATING:  # Ollama's limit is options.num_predict (unset or -1: the rest of the context)
        options = body.get("options")
        if options is None:
            body["options"] = options = {}
        if isinstance(options, dict):
            v = options.get("num_predict")
            if v is None or (type(v) is int and v <= N_CTX):
                options["num_predict"] = MAX_NEW_TOKENS
        return
    keys = TOKEN_LIMITS.get(path)
    if keys is None:
        return
    if all(body.get(k) is None for k in keys):
        body[keys[-1]] = MAX_NEW_TOKENS
    for k in keys:
        v = body.get(k)
        if type(v) is int and 0 < v <= N_CTX:
            body[k] = min(v, MAX_NEW_TOKENS)


def server_error(case: Any, url: str) -> str | None:
    """Send ``case`` (bounded); a description of the answer if it is a 5xx."""
    bounded(case)
    response = case.call(base_url=url, timeout=120)
    try:
        case.validate_response(response, checks=[not_a_server_error])
    except Exception as e:
        return f"{response.status_code} {response.text[:300]}\n  {case.as_curl_command()[:2000]}\n  {e}"
    return None


def fuzz(operation: Any, url: str, mode: schemathesis.GenerationMode, examples: int = MAX_EXAMPLES) -> list[str]:
    """Up to ``examples`` derandomized cases of ``operation``; the 5xx answers (each with its curl command)."""
    failures: list[str] = []

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        failure = server_error(case, url)
        if failure:
            failures.append(failure)

    run()
    return failures


@pytest.mark.parametrize("path", MODEL_POSTS)
def test_no_boundary_or_invalid_value_gets_a_server_error(fuzz_schema, api_url, path):
    operation = fuzz_schema[path]["POST"]
    cases = fuzz_schema.iter_coverage_cases(operation, generation_modes=list(MODES),
                                            generation_config=fuzz_schema.config.generation_for(operation=operation))
    failures = [f for f in (server_error(case, api_url) for case in cases) if f]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("path", MODEL_POSTS)
@pytest.mark.parametrize("mode", MODES)
def test_no_request_body_gets_a_server_error(fuzz_schema, api_url, path, mode):
    failures = fuzz(fuzz_schema[path]["POST"], api_url, mode)
    assert not failures, "\n".join(failures)


def test_no_read_gets_a_server_error(fuzz_schema, api_url):
    ops = {(op.method.upper(), op.path) for op in (r.ok() for r in fuzz_schema.get_all_operations())}
    failures = []
    for path in READS:
        assert ("GET", path) in ops, f"GET {path} is not in the served schema any more: update READS"
        failures += fuzz(fuzz_schema[path]["GET"], api_url, schemathesis.GenerationMode.POSITIVE)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("path", FAMILY_POSTS)
def test_no_request_to_another_family_gets_a_server_error(fuzz_schema, api_url, path):
    """The Messages, Responses, Ollama, tokenizer and rerank routes: boundary and invalid values, then a few
    derandomized bodies of each kind."""
    operation = fuzz_schema[path]["POST"]
    cases = fuzz_schema.iter_coverage_cases(operation, generation_modes=list(MODES),
                                            generation_config=fuzz_schema.config.generation_for(operation=operation))
    failures = [f for f in (server_error(case, api_url) for case in cases) if f]
    for mode in MODES:
        failures += fuzz(operation, api_url, mode, FAMILY_EXAMPLES)
    assert not failures, "\n".join(failures)
