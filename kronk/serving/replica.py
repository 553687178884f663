"""One model in this process: its service and admission, as a backend streams from it.

``deployments.llm.LlamaReplica`` is the same with Serve's ``@serve.batch`` as the
admission; here calls are admitted one by one (nothing arrives together over a hop).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from kronk.serving.call import Call
from kronk.serving.items import Item
from kronk.serving.service import ModelService
from kronk.serving.streams import admitted, alone


def replica_info(service: ModelService) -> dict[str, Any]:
    """What a model replica says of itself. Its internal callers (over the handle) see all of it; clients
    (``/v1/stats``, the model card) only its kronk.serving.backend.public_info, never ``model_path``."""
    st = service.engine.stats()
    return {"model": service.model_id, "error": None, "replica": service.recorder.replica,
            "model_path": getattr(getattr(service.engine, "cfg", None), "model_path", None),
            "stats": asdict(st), "context_length": st.n_ctx_slot,
            "sampling_defaults": service.sampling.card()}


def replica_snapshot(service: ModelService) -> dict[str, Any]:
    """The replica's metrics snapshot, with a fresh sample of the engine's gauges."""
    service.recorder.on_engine_stats(service.engine.stats())
    return service.recorder.snapshot()


class ModelReplica:
    def __init__(self, service: ModelService):
        self.service = service
        self._batched = alone(service.run)

    def stream(self, call: Call) -> AsyncIterator[Item]:
        return admitted(call, self._batched)

    async def info(self) -> dict[str, Any]:
        return replica_info(self.service)

    def snapshot(self) -> dict[str, Any]:
        return replica_snapshot(self.service)
