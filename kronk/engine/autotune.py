"""Autotune: the engine settings a model gets within a memory budget (docs/memory.md).

``autotune(shape, budget_bytes, ...)`` picks a context per slot, a slot count, a KV cache type and, with a
GPU, how many layers to offload, so that the memory estimate (kronk/engine/memory.py) fits the budget. A
value given is a constraint: it is kept as it is, and when it cannot fit the answer is
:class:`~kronk.errors.MemoryBudgetExceeded` saying what would. Values left to it are chosen in this order of
preference (the first candidate that fits wins):

1. the largest context per slot up to ``max_ctx`` (``DEFAULT_CTX``; never past the model's trained context),
   ``max_parallel`` slots (``DEFAULT_PARALLEL``), the preferred KV type (f16 unless a catalog says);
2. a q8_0 KV cache (about half of f16's memory; no measurable quality or speed cost measured here);
3. the context halving, down to ``GOOD_CTX`` (each with the KV types of 1 and 2);
4. a slot fewer, and 1-3 again, down to one slot;
5. the context halving below ``GOOD_CTX``, down to ``MIN_CTX``, with one slot and the smallest KV type.

Flash attention is left to llama.cpp (``auto``: on wherever its backend supports it, which includes the
CPU); a quantized V cache turns it on (kronk/engine/kvcache.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kronk.engine.memory import (
    KV_TYPE_IDS,
    MemoryEstimate,
    ModelShape,
    bytes_per_element,
    estimate,
    flash_runs,
    format_bytes,
)
from kronk.errors import InvalidRequest, MemoryBudgetExceeded
from kronk.settings import pool_tokens

DEFAULT_CTX = 8192  # per slot, when the model was trained for at least this much
DEFAULT_PARALLEL = 4
GOOD_CTX = 4096  # the context is shrunk to this before slots are given up
MIN_CTX = 512
SHORT_KV = "q8_0"  # the KV type used when memory is short
DEFAULT_KV = "f16"


@dataclass(frozen=True)
class Tuned:
    """The settings chosen, their estimate, and why (one line per decision, for logs and ``model ps``)."""

    n_ctx: int  # per slot (EngineConfig.ctx_size)
    parallel: int
    cache_type_k: str
    cache_type_v: str
    flash_attn: str
    gpu_layers: int  # -1: all layers; 0: none (CPU)
    estimate: MemoryEstimate
    reasons: list[str] = field(default_factory=list, compare=False, hash=False)

    def engine_overrides(self) -> dict[str, object]:
        """The EngineConfig fields these settings set."""
        return {"ctx_size": self.n_ctx, "parallel": self.parallel, "cache_type_k": self.cache_type_k,
                "cache_type_v": self.cache_type_v, "flash_attn": self.flash_attn, "gpu_layers": self.gpu_layers}


Candidate = tuple[int, int, str, str]  # context per slot, slots, K type, V type


@dataclass(frozen=True)
class _Ask:
    """What stays fixed while candidates are tried: the model, the engine's knobs, the values given."""

    shape: ModelShape
    batch_size: int
    ubatch_size: int
    swa_full: bool
    flash_attn: str
    prefill_chunk: int
    gpu: bool
    n_ctx: int | None
    parallel: int | None
    kv: tuple[str, str] | None  # given K and V types
    max_ctx: int = DEFAULT_CTX
    max_parallel: int = DEFAULT_PARALLEL
    preferred_kv: str = DEFAULT_KV
    kv_unified: bool = False  # one pool shared by the slots: kv_pool_tokens, else POOL_CONTEXTS contexts
    kv_pool_tokens: int | None = None

    def estimate(self, c: Candidate) -> MemoryEstimate:
        n_ctx, parallel, k, v = c
        pool = pool_tokens(n_ctx, self.kv_pool_tokens) if self.kv_unified else None
        return estimate(self.shape, n_ctx, parallel, k, v, self.batch_size, self.ubatch_size, swa_full=self.swa_full,
                        flash_attn=flash_runs(self.flash_attn, v), prefill_chunk=self.prefill_chunk, gpu=self.gpu,
                        kv_unified=self.kv_unified, pool_cells=pool)

    @property
    def kv_choices(self) -> list[tuple[str, str]]:
        if self.kv is not None:
            return [self.kv]
        first = self.preferred_kv
        if self.flash_attn == "off" and _quantized(first):  # a quantized V cache needs flash attention
            first = DEFAULT_KV
        if self.flash_attn == "off" or bytes_per_element(SHORT_KV) >= bytes_per_element(first):
            return [(first, first)]
        return [(first, first), (SHORT_KV, SHORT_KV)]

    @property
    def cap(self) -> int:
        """The largest context per slot tried: max_ctx, or the trained context when that is shorter."""
        trained = self.shape.n_ctx_train
        return min(self.max_ctx, trained) if trained > 0 else self.max_ctx

    def candidates(self) -> Iterator[Candidate]:
        """In order of preference (the module's docstring); given values stay fixed."""
        cap = self.cap
        good = min(GOOD_CTX, cap)
        ctx_good = [self.n_ctx] if self.n_ctx is not None else _halvings(cap, good)
        ctx_low = [] if self.n_ctx is not None else _halvings(good, MIN_CTX)[1:]
        slots = [self.parallel] if self.parallel is not None else list(range(self.max_parallel, 0, -1))
        kvs = self.kv_choices
        for p in slots:
            for c in ctx_good:
                for k, v in kvs:
                    yield c, p, k, v
        k, v = kvs[-1]
        for c in ctx_low:
            yield c, slots[-1], k, v


def _halvings(start: int, stop: int) -> list[int]:
    """start, start/2, ... while at least ``stop`` (always ``start`` itself)."""
    out = [start]
    while out[-1] // 2 >= stop:
        out.append(out[-1] // 2)
    return out


def _fit(ask: _Ask, budget: int) -> tuple[Candidate, MemoryEstimate] | None:
    for c in ask.candidates():
        est = ask.estimate(c)
        if est.total_bytes <= budget:
            return c, est
    return None


def _reasons(ask: _Ask, budget: int, chosen: Candidate, est: MemoryEstimate) -> list[str]:
    c, p, k, v = chosen
    short = "does not fit the budget"
    cap = ask.cap
    trained = f" (trained for {ask.shape.n_ctx_train})" if ask.shape.n_ctx_train else ""
    out = [f"budget {format_bytes(budget)}: {est.describe()}"]
    out.append(f"context {c} per slot: " + ("as set" if ask.n_ctx is not None else
                                           f"{cap} {short}" if c < cap else f"the largest allowed{trained}"))
    out.append(f"{p} slots" + (": as set" if ask.parallel is not None else
                               "" if p == ask.max_parallel else f": {ask.max_parallel} {short}"))
    kv = k if k == v else f"{k}/{v}"
    out.append(f"KV cache {kv}" + (": as set" if ask.kv is not None else
                                   ": flash attention is off" if len(ask.kv_choices) == 1 else
                                   "" if k == ask.preferred_kv else f": {ask.preferred_kv} {short}"))
    return out


def _not_fitting(ask: _Ask, budget: int) -> MemoryBudgetExceeded:
    """The error for settings that cannot fit: what the smallest candidate needs, and what to change."""
    smallest = list(ask.candidates())[-1]
    est = ask.estimate(smallest)
    fixed = [name for name, value in (("ctx_size", ask.n_ctx), ("parallel", ask.parallel),
                                      ("kv_cache_type", ask.kv)) if value is not None]
    least = ask.estimate((min(MIN_CTX, ask.cap), 1, *ask.kv_choices[-1]))
    if least.total_bytes > budget:
        hint = "the model does not fit even with the smallest settings: raise the budget or use a smaller model"
        fixed = []
    else:
        hint = "lower " + " or ".join(fixed)
    c, p, k, v = smallest
    return MemoryBudgetExceeded(
        f"{Path(ask.shape.path).name} needs about {format_bytes(est.total_bytes)} with ctx_size {c} x parallel "
        f"{p} and a {k}/{v} KV cache ({est.describe()}); the memory budget is {format_bytes(budget)}: {hint}",
        needed_bytes=est.total_bytes, budget_bytes=budget, param=fixed[0] if len(fixed) == 1 else None)


def _gpu_layers(ask: _Ask, budget: int, chosen: Candidate) -> tuple[int, MemoryEstimate]:
    """How many layers fit on the GPU when the whole model does not: each layer's share of the weights and
    its KV cache go with it; the compute buffers stay on the GPU whatever the split (the rest of the
    overhead is host memory)."""
    full = ask.estimate(chosen)
    n_layer = max(1, ask.shape.n_layer)
    per_layer = (full.weights_bytes + full.kv_bytes) / n_layer
    room = budget - full.compute_bytes
    return max(0, min(n_layer - 1, int(room // per_layer))), full


def autotune(shape: ModelShape, budget_bytes: int, *, n_ctx: int | None = None, parallel: int | None = None,
             cache_type: str | None = None, cache_type_k: str | None = None, cache_type_v: str | None = None,
             flash_attn: str = "auto", gpu: bool = False, max_ctx: int = DEFAULT_CTX,
             max_parallel: int = DEFAULT_PARALLEL, preferred_cache_type: str = DEFAULT_KV, batch_size: int = 512,
             ubatch_size: int | None = None, swa_full: bool = True, prefill_chunk: int = 256,
             kv_unified: bool = False, kv_pool_tokens: int | None = None) -> Tuned:
    """Settings for ``shape`` within ``budget_bytes`` (host memory; the GPU's memory when ``gpu``).

    ``n_ctx`` (per slot), ``parallel`` and the KV types (``cache_type`` for both, or ``cache_type_k`` /
    ``cache_type_v``) are kept when given; None leaves them to the rules in the module's docstring (an
    ``n_ctx`` past the trained context is capped there, as the engine caps it). Left to it, the context per
    slot is at most ``max_ctx``, the slots at most ``max_parallel``, and the KV type ``preferred_cache_type``
    first (a catalog's recommendation), then q8_0 if that is smaller. ``flash_attn`` ``off`` keeps the V
    cache unquantized. ``batch_size``, ``ubatch_size`` (None: min(batch_size, 512)), ``swa_full`` and
    ``prefill_chunk`` are the engine's (kronk.engine.config.EngineConfig), as the estimate needs them; so are
    ``kv_unified`` and ``kv_pool_tokens`` (one pool for the slots: its size, else POOL_CONTEXTS contexts). With
    ``gpu``, every layer goes to the GPU when some candidate fits; otherwise as many layers as fit with the
    first candidate (the rest runs on the CPU, in host memory this budget does not cover). Raises
    MemoryBudgetExceeded when nothing fits, InvalidRequest for a quantized V cache with flash attention off."""
    kv = _kv_constraint(cache_type, cache_type_k, cache_type_v, flash_attn)
    _check_type("preferred_cache_type", preferred_cache_type)
    capped = n_ctx is not None and 0 < shape.n_ctx_train < n_ctx
    ask = _Ask(shape, batch_size, ubatch_size if ubatch_size is not None else min(batch_size, 512), swa_full,
               flash_attn, prefill_chunk, gpu, shape.n_ctx_train if capped else n_ctx, parallel, kv,
               max_ctx=max_ctx, max_parallel=max_parallel, preferred_kv=preferred_cache_type, kv_unified=kv_unified,
               kv_pool_tokens=kv_pool_tokens)
    found = _fit(ask, budget_bytes)
    gpu_layers = -1 if gpu else 0
    if found is None and gpu:
        first = next(ask.candidates())
        gpu_layers, est = _gpu_layers(ask, budget_bytes, first)
        found = first, est
    if found is None:
        raise _not_fitting(ask, budget_bytes)
    chosen, est = found
    c, p, k, v = chosen
    reasons = _reasons(ask, budget_bytes, chosen, est)
    if capped:
        reasons.insert(1, f"ctx_size {n_ctx} capped at the model's trained context, {shape.n_ctx_train}")
    if gpu:
        reasons.append("all layers on the GPU" if gpu_layers < 0 else
                       f"{gpu_layers} of {shape.n_layer} layers on the GPU: the whole model does not fit")
    fa = "on" if flash_attn == "auto" and _quantized(v) else flash_attn
    reasons.append(f"flash attention {fa}" + (": llama.cpp turns it on where supported" if fa == "auto" else
                                              ": the quantized V cache needs it" if _quantized(v) else ""))
    return Tuned(c, p, k, v, fa, gpu_layers, est, reasons)


def _quantized(cache_type: str) -> bool:
    return cache_type not in ("f32", "f16", "bf16")


def _kv_constraint(cache_type: str | None, cache_type_k: str | None, cache_type_v: str | None,
                   flash_attn: str) -> tuple[str, str] | None:
    """The KV types given (K and V), checked: known types, and a quantized V only with flash attention."""
    if cache_type is None and cache_type_k is None and cache_type_v is None:
        return None
    base = cache_type or DEFAULT_KV
    k, v = cache_type_k or base, cache_type_v or base
    _check_type("cache_type_k", k)
    _check_type("cache_type_v", v)
    if flash_attn == "off" and _quantized(v):
        raise InvalidRequest(f"a quantized V cache ({v}) needs flash attention; set flash_attn to auto or on, or "
                             "use an f16 V cache", param="cache_type_v")
    return k, v


def _check_type(param: str, cache_type: str) -> None:
    if cache_type not in KV_TYPE_IDS:
        raise InvalidRequest(f"unknown KV cache type {cache_type!r} for {param}; choose one of "
                             f"{', '.join(KV_TYPE_IDS)}", param=param)
