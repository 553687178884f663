"""The model pool of a server: what loads a pool model, what it costs, and the budget (kronk.serving.pool).

A pool model is an installed model that the config does not pin. Its settings are
the server's (and its catalog entry's), with what the server leaves to the machine
autotuned within the memory free in the pool when it loads (kronk.engine.autotune):
its context, slots and KV cache type. Settings a user gave for it are kept as they
are, and a model that cannot fit with them is refused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from kronk.api.families import HANDLERS
from kronk.serving.pool import EventSink, LoadPlan, ModelPool, ModelTooLarge, parse_duration
from kronk.serving.service import ModelService
from kronk.settings import AUTOTUNED, ModelConfig, Settings, unified

log = logging.getLogger("kronk.serving.pool")



def node_memory_bytes() -> int:
    """This machine's memory, or the container's limit when it has a lower one (cgroup v2, then v1)."""
    total = psutil.virtual_memory().total
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            return int(text)
    return total


def budget_bytes(settings: Settings) -> int:
    """The pool's memory budget: ``memory_budget_bytes``, else ``memory_budget_fraction`` of the node's memory."""
    if settings.memory_budget_bytes is not None:
        return settings.memory_budget_bytes
    return int(settings.memory_budget_fraction * node_memory_bytes())


def _fixed(settings: Settings) -> dict[str, Any]:
    """The tunable settings the user set for the server (flag, env, config file): constraints, not tuned."""
    return {f: getattr(settings, f) for f in AUTOTUNED if f in settings.model_fields_set}


def plan_model(settings: Settings, model: str, budget: int) -> LoadPlan:
    """What loading ``model`` takes within a pool of ``budget`` bytes: the settings it will load with (autotuned
    where the user left them) and the estimate of exactly that engine config."""
    from kronk.engine.autotune import autotune
    from kronk.engine.config import engine_config
    from kronk.engine.memory import estimate_for, read_shape
    from kronk.errors import MemoryBudgetExceeded
    from kronk.store import ModelStore

    store = ModelStore(settings)
    path = store.resolve(ModelConfig(name=model))
    manifest = store.resolve_manifest(ModelConfig(name=model))
    resolved = settings.resolved_model(ModelConfig(name=model), catalog=manifest)
    fixed = _fixed(settings)
    shape = read_shape(path)
    try:
        tuned = autotune(shape, budget, n_ctx=fixed.get("ctx_size"), parallel=fixed.get("parallel"),
                         cache_type=fixed.get("kv_cache_type"), max_ctx=resolved.ctx_size,
                         max_parallel=resolved.parallel, preferred_cache_type=resolved.kv_cache_type,
                         batch_size=resolved.batch_size, flash_attn=resolved.flash_attn,
                         kv_unified=unified(resolved.kv_unified, resolved.batch_invariant),
                         kv_pool_tokens=resolved.kv_pool_tokens)
    except MemoryBudgetExceeded as e:  # not even in an empty pool
        raise ModelTooLarge(f"{e.message} (the pool's budget: memory_budget_bytes / memory_budget_fraction)",
                            param="model") from None
    chosen = {"ctx_size": tuned.n_ctx, "parallel": tuned.parallel, "kv_cache_type": tuned.cache_type_k}
    est = estimate_for(shape, engine_config(settings, ModelConfig(name=model, **chosen), path, manifest))
    if est.total_bytes > budget and resolved.prefix_cache_bytes is None:
        # the RAM prefix cache (as large as the KV cache when unset) gets what the budget leaves after the rest
        chosen["prefix_cache_bytes"] = max(0, budget - (est.total_bytes - est.prefix_cache_bytes))
        est = estimate_for(shape, engine_config(settings, ModelConfig(name=model, **chosen), path, manifest))
    log.info("pool model %s: %s, about %s (%s)", model, chosen, est.describe(),
             "; ".join(tuned.reasons) or "as configured")
    return LoadPlan(int(est.total_bytes), chosen)


def start_service(settings: Settings, m: ModelConfig, path: str | Path, manifest: Any | None) -> ModelService:
    """A model's engine and service (a pinned model's replica and the pool load the same way): its engine config
    and the sampling defaults a request leaves unset (the server's setting, the GGUF's values, the catalog's)."""
    from kronk.engine.config import engine_config
    from kronk.engine.engine import LlamaEngine
    from kronk.serving.sampling import catalog_entry, served_sampling
    from kronk.store import ModelStore

    engine = LlamaEngine(engine_config(settings, m, path, manifest))
    try:
        catalog = ModelStore(settings).catalog
        sampling = served_sampling(settings, catalog, m.model_source, manifest, engine)
        entry = catalog_entry(catalog, m.model_source, manifest)
        return ModelService(engine, m.name, HANDLERS, sampling=sampling,
                            prompt_tools=entry is not None and "tools" in entry.capabilities)
    except BaseException:
        engine.close()
        raise


def load_model(settings: Settings, model: str, plan: LoadPlan) -> ModelService:
    """Start ``model``'s engine with the plan's settings (an installed model: nothing is pulled here)."""
    from kronk.store import ModelStore

    store = ModelStore(settings)
    cfg = ModelConfig(name=model, **plan.settings)
    return start_service(settings, cfg, store.resolve(cfg), store.resolve_manifest(cfg))


def make_pool(settings: Settings, *, replica: str = "local", on_event: EventSink | None = None,
              started: Callable[[ModelService], None] | None = None,
              stopped: Callable[[ModelService], None] | None = None) -> ModelPool:
    """The pool of one process (a pool replica, or the one-model replica beside its pinned model). ``started``
    is called with each model's service once loaded (its telemetry), ``stopped`` before its engine closes."""
    budget = budget_bytes(settings)
    log.info("model pool on %s (pid %d): budget %.2f GiB, keep-alive %s s", replica, os.getpid(), budget / 2**30,
             settings.keep_alive_s)

    def load(model: str, plan: LoadPlan) -> ModelService:
        svc = load_model(settings, model, plan)
        if started is not None:
            started(svc)
        return svc

    def close(svc: ModelService) -> None:
        if stopped is not None:
            stopped(svc)
        svc.engine.close()

    return ModelPool(load, lambda m, free: plan_model(settings, m, free), budget,
                     keep_alive_s=parse_duration(settings.keep_alive_s), on_event=on_event, replica=replica,
                     close=close)
