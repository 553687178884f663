"""What the HTTP routes talk to: a Backend finds a model and streams a call's items.

Two implementations: :class:`kronk.serving.local.LocalBackend`, over models in
this process (the one-model replica that takes HTTP itself, benchmarks, the
one-process API tests), and ``deployments.ingress.ServeBackend``, over Serve
deployment handles (the routing ingress).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from kronk.errors import redact_paths
from kronk.serving.call import Call
from kronk.serving.items import Item
from kronk.telemetry.stats import summarize


class ModelOps(Protocol):
    """The model manager's calls (see kronk.store.manager.ModelManager), awaitable."""

    async def call(self, method: str, *args: Any) -> Any: ...


class Backend(Protocol):
    async def model_ids(self) -> list[str]:
        """Ids of the models that can be asked for now."""

    async def model_cards(self) -> list[dict[str, Any]]:
        """OpenAI model objects, with kronk's extra fields."""

    def stream(self, call: Call) -> AsyncIterator[Item]:
        """A call's items (see kronk.serving.items); errors come as a Failure item, never raised."""

    async def stats(self, snapshots: list[dict[str, Any]]) -> dict[str, Any]:
        """``/v1/stats`` (see :func:`stats_of`); ``snapshots``: every replica's metrics, the front's included."""

    def model_ops(self) -> ModelOps:
        """The model manager (pulls, store, catalog)."""

    async def telemetry(self) -> list[dict[str, Any]]:
        """The metrics snapshots of every replica it knows of (kronk.telemetry.metrics.Recorder.snapshot)."""

    # The model pool: installed models that no deployment pins, served on demand (kronk.serving.pool).
    on_demand: bool  # a pool serves them (else only the pinned models answer)

    async def pool_states(self) -> list[dict[str, Any]]:
        """Every pool model's state on every pool replica (kronk.serving.pool.ModelPool.state_of)."""

    async def load_model(self, model: str, keep_alive_s: float | None = None) -> dict[str, Any]:
        """Load a pool model now; its state."""

    async def unload_model(self, model: str) -> dict[str, Any]:
        """Unload a pool model once its running requests end; its state."""

    def model_events(self) -> AsyncIterator[dict[str, Any]]:
        """The pool's state changes as they happen (loading, loaded, unloaded, evicted, error)."""


# What of a replica's info (kronk.serving.replica.replica_info, deployments.llm.LlamaReplica.info) a client may
# see in /v1/stats. The rest (the GGUF's path, the node id, the pid) stays with the server: its internal
# callers read the info over the handle. A field added to the info is private until it is named here.
PUBLIC_INFO = ("model", "error", "replica", "replicas", "stats", "context_length", "sampling_defaults")


def public_info(info: dict[str, Any]) -> dict[str, Any]:
    """The client-facing part of a replica's info: :data:`PUBLIC_INFO`, absolute paths cut from its error."""
    out = {k: info[k] for k in PUBLIC_INFO if k in info}
    if isinstance(out.get("error"), str):
        out["error"] = redact_paths(out["error"])
    return out


def model_card(model_id: str, created: int, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """An OpenAI model object for a served model, from what its replica says of itself (``info``)."""
    info = public_info(info or {})
    idle = info.get("replicas") == 0
    card: dict[str, Any] = {"id": model_id, "object": "model", "created": created, "owned_by": "kronk",
                            "status": "error" if info.get("error") else ("scaled_to_zero" if idle else "ready")}
    if info.get("error"):
        card["error"] = info["error"]
    if info.get("context_length"):
        card["context_length"] = info["context_length"]
    if info.get("sampling_defaults"):  # what a request's unset sampling fields take, each with its source
        card["sampling_defaults"] = info["sampling_defaults"]
    return card


def stats_of(infos: dict[str, dict[str, Any]], running: dict[str, int],
             snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """``/v1/stats``: per model, one replica's live engine stats (``stats``), the running replicas and
    ``aggregate``, every replica's numbers together (kronk.telemetry.stats.summarize). Only the
    :func:`public_info` of each replica's info: no path, pid or node id."""
    aggregate = summarize(snapshots)
    out = {}
    for m, info in infos.items():
        out[m] = {**public_info(info), "replicas": running.get(m, info.get("replicas", 1)),
                  "aggregate": aggregate.get(m)}
    return {"models": out}
