"""``/v1/rerank`` on a real reranker GGUF built at test time (tests/rerankers.py: SmolLM2 as a ``qwen3`` model with
a rank head), through llama.cpp's own rank pooling, the in-process backend and real HTTP.

The scores are checked against an independent computation: the head applied, in numpy, to the last token's
hidden state that a twin GGUF (same weights, LAST pooling, no head) gives through the embeddings path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from kronk.api.app import create_app
from kronk.api.families import HANDLERS
from kronk.api.limits import Limits
from kronk.engine import EngineConfig
from kronk.engine.engine import LlamaEngine
from kronk.engine.rerank import RerankRunner, rerank_prompt
from kronk.serving.local import LocalBackend
from kronk.serving.service import ModelService
from kronk.settings import Settings
from tests.helpers import SMOL, http_server
from tests.rerankers import N_EMBD, RERANK_TEMPLATE, build

RR = "test-reranker"
N_CTX = 256  # the reranker's embedding_ctx: the most tokens of one pair
QUERY = "what is a cat"
DOCS = ["a cat is a small feline", "rockets fly to space", "bread and butter", "cats purr"]


class Rerankers:
    def __init__(self, root: Path):
        self.twin = LlamaEngine(EngineConfig(batch_invariant=True,
                                             model_path=str(build(root / "twin.gguf", pooling=3)), name="twin",
                                             embedding_ctx=N_CTX, threads=1))
        # a head orthogonal to a reference pair's hidden state: the scores of similar pairs spread around 0.5
        h_ref = self.hidden_sync(self.template_tokens("what is it", "something"))
        w = np.random.default_rng(0).normal(size=(2, N_EMBD)) * 0.1
        self.head = (w - np.outer(w @ h_ref, h_ref) / (h_ref @ h_ref)).astype(np.float32)
        self.rr = LlamaEngine(EngineConfig(batch_invariant=True,
                                           model_path=str(build(root / "rr.gguf", pooling=4, head=self.head,
                                                                template=RERANK_TEMPLATE)),
                                           name=RR, embedding_ctx=N_CTX, threads=1))
        flags = {"add_bos_token": True, "add_eos_token": True, "add_sep_token": True, "seperator_token_id": 0}
        self.plain = LlamaEngine(EngineConfig(batch_invariant=True,
                                              model_path=str(build(root / "plain.gguf", pooling=4, head=self.head,
                                                                   vocab_flags=flags)),
                                              name="plain", embedding_ctx=N_CTX, threads=1))

    def template_tokens(self, query: str, doc: str) -> list[int]:
        text = RERANK_TEMPLATE.replace("{query}", query).replace("{document}", doc)
        return self.twin.tokenize(text, add_special=False, parse_special=True)

    def hidden_sync(self, tokens: list[int]) -> np.ndarray:
        return np.array(asyncio.run(self.twin.embed([tokens], normalize=False))[0][0])

    async def expected(self, tokens: list[int]) -> float:
        """softmax(head @ h)[0], h the pair's last hidden state (scored alone, as the reranker scores a pair)."""
        h = np.array((await self.twin.embed([tokens], normalize=False))[0][0], dtype=np.float64)
        z = self.head.astype(np.float64) @ h
        p = np.exp(z - z.max())
        return float(p[0] / p.sum())

    def close(self) -> None:
        for e in (self.twin, self.rr, self.plain):
            e.close()


@pytest.fixture(scope="module")
def rerankers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rerankers]:
    r = Rerankers(tmp_path_factory.mktemp("rerankers"))
    yield r
    r.close()


@pytest.fixture(scope="module")
def urls(rerankers: Rerankers, services: dict[str, ModelService],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``main``: the test models and the reranker; ``tight``: the same with small limits; ``alone``: the reranker
    as the one model (llama-server's routes name none)."""
    settings = Settings(home=tmp_path_factory.mktemp("kronk-home"))
    svc = ModelService(rerankers.rr, RR, HANDLERS)
    every = {**services, RR: svc}
    tight = Limits(max_embedding_inputs=3, max_embedding_tokens=60)
    with http_server(create_app(LocalBackend.of_services(every, settings), limits=Limits.from_settings(settings))) \
            as main, http_server(create_app(LocalBackend.of_services(every, settings), limits=tight)) as small, \
            http_server(create_app(LocalBackend.of_services({RR: svc}, settings))) as alone:
        yield {"main": main, "tight": small, "alone": alone}


def post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=120)


def error(r: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, r.text
    return r.json()["error"]


@pytest.fixture(scope="module")
def ranked(urls) -> dict[str, Any]:
    """DOCS ranked for QUERY, as strings and as objects, with their texts."""
    docs: list[Any] = [DOCS[0], {"text": DOCS[1], "id": "b"}, DOCS[2], {"text": DOCS[3]}]
    r = post(urls["main"], "/v1/rerank", {"model": RR, "query": QUERY, "documents": docs, "return_documents": True})
    assert r.status_code == 200, r.text
    return r.json()


async def test_scores_are_the_rank_head_over_the_last_hidden_state(rerankers, ranked):
    assert ranked["object"] == "list" and ranked["model"] == RR and ranked["id"].startswith("rerank-")
    results = ranked["results"]
    assert sorted(x["index"] for x in results) == [0, 1, 2, 3]
    scores = [x["relevance_score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    assert max(scores) - min(scores) > 0.05  # the head tells these pairs apart: the order is the scores'
    tokens = {i: rerankers.template_tokens(QUERY, d) for i, d in enumerate(DOCS)}
    for x in results:
        assert x["document"] == {"text": DOCS[x["index"]]}
        assert x["relevance_score"] == pytest.approx(await rerankers.expected(tokens[x["index"]]), abs=1e-5)
    n = sum(len(t) for t in tokens.values())
    assert ranked["usage"] == {"prompt_tokens": n, "total_tokens": n}


def test_a_pair_scores_the_same_alone_and_among_others_and_top_n_cuts(urls, ranked):
    score = {x["index"]: x["relevance_score"] for x in ranked["results"]}
    for i in (0, 3):
        alone = post(urls["main"], "/v1/reranking", {"model": RR, "query": QUERY, "documents": [DOCS[i]]}).json()
        assert alone["results"] == [{"index": 0, "relevance_score": score[i]}]  # no document: off by default
    top = post(urls["main"], "/v1/rerank", {"model": RR, "query": QUERY, "documents": DOCS[:2], "top_n": 1}).json()
    best = max((0, 1), key=lambda i: score[i])
    assert top["results"] == [{"index": best, "relevance_score": score[best]}]
    # llama-server's path, without a model: the one the server serves; top_n beyond the documents is all of them
    r = post(urls["alone"], "/rerank", {"query": QUERY, "documents": [DOCS[3]], "top_n": 10})
    assert r.status_code == 200, r.text
    assert r.json()["results"] == [{"index": 0, "relevance_score": score[3]}]


async def test_without_a_rerank_template_a_pair_is_bos_query_eos_sep_document_eos(rerankers):
    plain = rerankers.plain
    m = plain.model
    tokens = rerank_prompt(m, None, QUERY, DOCS[0])
    q = m.tokenize(QUERY, add_special=False, parse_special=False)
    d = m.tokenize(DOCS[0], add_special=False, parse_special=False)
    assert tokens == [m.bos, *q, m.eos, 0, *d, m.eos]  # SEP: token 0, as its GGUF names it
    scores, n = await plain.rerank(QUERY, [DOCS[0]])
    assert n == len(tokens)
    assert scores[0] == pytest.approx(await rerankers.expected(tokens), abs=1e-5)


def test_a_long_pair_spans_micro_batches_and_scores_by_its_last_token(rerankers, ranked):
    rr = rerankers.rr
    split = RerankRunner(rr.model, rr.threads, N_CTX)
    split.n_ubatch = 8  # the pair (about 22 tokens) in three micro-batches
    try:
        scores, _ = split.rerank(QUERY, [DOCS[0]])
    finally:
        split.close()
    assert scores[0] == pytest.approx(next(x["relevance_score"] for x in ranked["results"] if x["index"] == 0),
                                      abs=1e-5)


def test_refusals(urls):
    main, tight = urls["main"], urls["tight"]
    e = error(post(main, "/v1/rerank", {"model": SMOL, "query": QUERY, "documents": DOCS}))
    assert e["param"] == "model" and "not a reranker" in e["message"]
    assert error(post(main, "/v1/rerank", {"model": "nope", "query": QUERY, "documents": DOCS}), 404)["param"] \
        == "model"
    for bad in ({"documents": []}, {"query": ""}, {"top_n": 0}, {"documents": [{"title": "no text"}]},
                {"documents": "one string"}):
        error(post(main, "/v1/rerank", {"model": RR, "query": QUERY, "documents": DOCS, **bad}))
    e = error(post(tight, "/v1/rerank", {"model": RR, "query": QUERY, "documents": DOCS}))
    assert "max_embedding_inputs" in e["message"]
    e = error(post(tight, "/v1/rerank", {"model": RR, "query": QUERY, "documents": DOCS[:3]}))
    assert e["param"] == "documents" and "max_embedding_tokens" in e["message"]
    e = error(post(main, "/v1/rerank", {"model": RR, "query": QUERY, "documents": ["cat " * 300]}))
    assert e["param"] == "documents" and e["code"] == "context_length_exceeded" and "documents[0]" in e["message"]
    # the reranker is for /v1/rerank only
    e = error(post(main, "/v1/embeddings", {"model": RR, "input": "a cat"}))
    assert "reranker" in e["message"]
    e = error(post(main, "/v1/chat/completions", {"model": RR, "max_tokens": 2,
                                                  "messages": [{"role": "user", "content": "hi"}]}))
    assert "reranker" in e["message"]
