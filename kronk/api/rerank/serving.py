"""Rerank in the replica: (query, document) pairs -> the engine's rank scores -> one JSON answer, best first."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from kronk.api.rerank.schemas import RerankRequest
from kronk.errors import Unsupported
from kronk.serving.call import RequestContext
from kronk.serving.items import Item
from kronk.telemetry.generation import GenerationObserver

if TYPE_CHECKING:
    from kronk.serving.service import ModelService


async def serve_rerank(svc: ModelService, req: RerankRequest, ctx: RequestContext,
                       obs: GenerationObserver) -> AsyncIterator[Item]:
    rerank = getattr(svc.engine, "rerank", None)
    if rerank is None:
        raise Unsupported(f"model {svc.model_id} cannot rerank", param="model")
    texts = req.texts()
    scores, n_tokens = await rerank(req.query, texts, max_tokens=req.token_budget)  # tokenized once, in the
    # engine's thread
    order = sorted(range(len(texts)), key=lambda i: -scores[i])  # stable: equal scores keep document order
    results: list[dict[str, Any]] = []
    for i in order[: req.top_n]:
        r: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if req.return_documents:
            r["document"] = {"text": texts[i]}
        results.append(r)
    obs.embedded(n_tokens)
    yield {"id": f"rerank-{ctx.request_id}", "object": "list", "model": svc.model_id, "results": results,
           "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}
