"""Embeddings in the replica: inputs -> the engine's pooled vectors -> one JSON answer."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from kronk.api.embeddings.schemas import EmbeddingRequest
from kronk.errors import InvalidRequest
from kronk.serving.call import RequestContext
from kronk.serving.items import Item
from kronk.telemetry.generation import GenerationObserver

if TYPE_CHECKING:
    from kronk.serving.service import ModelService


def _renorm(v: list[float]) -> list[float]:
    n = sum(x * x for x in v) ** 0.5 or 1.0
    return [x / n for x in v]


async def serve_embeddings(svc: ModelService, req: EmbeddingRequest, ctx: RequestContext,
                           obs: GenerationObserver) -> AsyncIterator[Item]:
    vectors, n_tokens = await svc.engine.embed(req.inputs(), max_tokens=req.token_budget)  # tokenized once, in
    # the engine's thread
    if req.dimensions is not None:
        if req.dimensions > len(vectors[0]):
            raise InvalidRequest(f"dimensions must be at most {len(vectors[0])} for this model", param="dimensions")
        vectors = [_renorm(v[: req.dimensions]) for v in vectors]
    data = []
    for i, v in enumerate(vectors):
        emb: Any = v
        if req.encoding_format == "base64":
            emb = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    obs.embedded(n_tokens)
    yield {"object": "list", "data": data, "model": svc.model_id,
           "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}
