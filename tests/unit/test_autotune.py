"""Autotune (kronk/engine/autotune.py): settings within a memory budget, given values kept as constraints."""

from __future__ import annotations

import pickle

import pytest

from kronk.engine.autotune import DEFAULT_CTX, DEFAULT_PARALLEL, MIN_CTX, autotune
from kronk.engine.memory import ModelShape, estimate, read_shape
from kronk.errors import InvalidRequest, MemoryBudgetExceeded
from tests.models import gemma_path

MiB = 1024 * 1024


def shape(n_ctx_train: int = 32768, weights_mib: int = 100) -> ModelShape:
    """A llama-like model: 8 layers, 2 KV heads of 64 (4 KiB a cell in f16), no sliding window."""
    return ModelShape(path="/models/synthetic.gguf", architecture="llama", n_layer=8, n_embd=512, n_ff=1024,
                      n_head=(8,) * 8, n_head_kv=(2,) * 8, head_dim_k=64, head_dim_v=64, head_dim_k_swa=64,
                      head_dim_v_swa=64, n_swa=0, swa_layers=(False,) * 8, n_ctx_train=n_ctx_train,
                      n_vocab=32000, weights_bytes=weights_mib * MiB)


def need(s: ModelShape, n_ctx: int, parallel: int, kv: str = "f16") -> int:
    return estimate(s, n_ctx, parallel, kv, kv, 512, 512, swa_full=True, flash_attn=True,
                    prefill_chunk=256).total_bytes


def picked(t) -> tuple:
    return t.n_ctx, t.parallel, t.cache_type_k


def test_plenty_of_memory_gives_the_defaults():
    s = shape()
    t = autotune(s, 64 * 1024 * MiB)
    assert picked(t) == (DEFAULT_CTX, DEFAULT_PARALLEL, "f16") and t.cache_type_v == "f16"
    assert t.gpu_layers == 0 and t.flash_attn == "auto"
    assert t.estimate.total_bytes == need(s, DEFAULT_CTX, DEFAULT_PARALLEL)
    assert any("the largest allowed" in r for r in t.reasons)


def test_the_context_never_passes_the_trained_one():
    assert picked(autotune(shape(n_ctx_train=2048), 64 * 1024 * MiB)) == (2048, 4, "f16")
    t = autotune(shape(n_ctx_train=2048), 64 * 1024 * MiB, n_ctx=16384)
    assert t.n_ctx == 2048 and any("capped at the model's trained context" in r for r in t.reasons)


def test_short_memory_takes_q8_0_first_then_a_smaller_context_then_fewer_slots():
    s = shape()
    # just under f16 at 8192 x 4: q8_0 at 8192 x 4 (about half the KV) fits
    t = autotune(s, need(s, 8192, 4) - 1)
    assert picked(t) == (8192, 4, "q8_0") and t.flash_attn == "on"
    assert any("f16 does not fit" in r for r in t.reasons)
    # under q8_0 at 8192 x 4: f16 at 4096 x 4 (the context halves before q8_0 is tried again)
    assert picked(autotune(s, need(s, 8192, 4, "q8_0") - 1)) == (4096, 4, "f16")
    assert picked(autotune(s, need(s, 4096, 4) - 1)) == (4096, 4, "q8_0")
    # under q8_0 at 4096 x 4: a slot goes, and the same ladder runs again with 3 slots
    assert picked(autotune(s, need(s, 4096, 4, "q8_0") - 1)) == (4096, 3, "q8_0")
    # room for one slot of q8_0 at 2048 only: the context goes below 4096 last
    assert picked(autotune(s, need(s, 2048, 1, "q8_0"))) == (2048, 1, "q8_0")


def test_every_choice_fits_the_budget_and_more_memory_never_gives_less():
    s = shape()
    last = None
    for budget_mib in range(130, 400, 7):
        t = autotune(s, budget_mib * MiB)
        assert t.estimate.total_bytes <= budget_mib * MiB
        cells = t.n_ctx * t.parallel
        if last is not None:
            assert cells >= last[0] or t.parallel > last[1]  # more memory: more cells or more slots
        last = cells, t.parallel


def test_given_values_are_kept():
    s = shape()
    budget = need(s, 8192, 4) - 1  # autotune alone would take q8_0
    t = autotune(s, budget, cache_type="f16")
    assert picked(t) == (4096, 4, "f16") and any("KV cache f16: as set" in r for r in t.reasons)
    t = autotune(s, budget, parallel=2)
    assert picked(t) == (8192, 2, "f16") and any("2 slots: as set" in r for r in t.reasons)
    t = autotune(s, budget, n_ctx=8192)
    assert picked(t) == (8192, 4, "q8_0")
    t = autotune(s, 64 * 1024 * MiB, cache_type_k="q8_0", cache_type_v="f16", n_ctx=1000, parallel=3)
    assert (t.n_ctx, t.parallel, t.cache_type_k, t.cache_type_v, t.flash_attn) == (1000, 3, "q8_0", "f16", "auto")


def test_given_values_that_cannot_fit_are_refused_naming_them():
    s = shape()
    with pytest.raises(MemoryBudgetExceeded) as e:
        autotune(s, need(s, 8192, 4) - 1, n_ctx=8192, parallel=4, cache_type="f16")
    err = e.value
    assert err.kind.status == 503 and err.code == "insufficient_memory" and err.retry_after_s is None
    assert "lower ctx_size or parallel or kv_cache_type" in err.message and "synthetic.gguf" in err.message
    assert "/models" not in err.message
    assert err.needed_bytes == need(s, 8192, 4) and err.budget_bytes == need(s, 8192, 4) - 1
    with pytest.raises(MemoryBudgetExceeded) as e:
        autotune(s, need(s, 8192, 1, "q8_0") - 1, parallel=1, n_ctx=8192)
    assert "lower ctx_size or parallel" in e.value.message
    restored = pickle.loads(pickle.dumps(e.value))  # crosses a Ray handle hop intact
    assert (restored.needed_bytes, restored.code, restored.message) == (e.value.needed_bytes, e.value.code,
                                                                        e.value.message)


def test_a_model_too_big_for_the_budget_says_so():
    s = shape(weights_mib=500)
    with pytest.raises(MemoryBudgetExceeded, match="does not fit even with the smallest settings") as e:
        autotune(s, 400 * MiB)
    assert e.value.needed_bytes == need(s, MIN_CTX, 1, "q8_0") and e.value.param is None


def test_flash_attention_off_keeps_the_v_cache_unquantized():
    s = shape()
    without = estimate(s, 8192, 4, flash_attn=False, swa_full=True, prefill_chunk=256).total_bytes  # + scores
    t = autotune(s, without - 1, flash_attn="off")
    assert picked(t) == (4096, 4, "f16") and t.flash_attn == "off"
    assert any("flash attention is off" in r for r in t.reasons)
    with pytest.raises(InvalidRequest, match="needs flash attention"):
        autotune(s, 64 * 1024 * MiB, cache_type="q8_0", flash_attn="off")
    with pytest.raises(InvalidRequest, match="unknown KV cache type"):
        autotune(s, 64 * 1024 * MiB, cache_type="q3_k")


def test_with_a_gpu_all_layers_go_when_they_fit_else_as_many_as_fit():
    s = shape()
    t = autotune(s, 64 * 1024 * MiB, gpu=True)
    assert t.gpu_layers == -1 and any("all layers on the GPU" in r for r in t.reasons)
    t = autotune(s, 150 * MiB, gpu=True)  # 100 MiB of weights and 128 MiB of KV: some layers only
    assert 0 < t.gpu_layers < s.n_layer and picked(t) == (DEFAULT_CTX, DEFAULT_PARALLEL, "f16")
    assert any(f"{t.gpu_layers} of 8 layers on the GPU" in r for r in t.reasons)


def test_the_default_model_in_a_small_budget():
    """Gemma 3 270M: 240 MiB of weights, 18 KiB of f16 KV a cell (swa_full, as the engine runs it)."""
    s = read_shape(gemma_path())
    roomy = autotune(s, 8 * 1024 * MiB)
    assert picked(roomy) == (8192, 4, "f16")
    tight = autotune(s, 700 * MiB)
    assert tight.estimate.total_bytes <= 700 * MiB
    assert picked(tight) in {(8192, 4, "q8_0"), (4096, 4, "f16"), (4096, 4, "q8_0")}
    with pytest.raises(MemoryBudgetExceeded):
        autotune(s, 200 * MiB)


def test_the_pools_limits_and_a_catalogs_kv_type_shape_the_ladder():
    s = shape()
    t = autotune(s, 64 * 1024 * MiB, max_ctx=2048, max_parallel=2, preferred_cache_type="q8_0")
    assert picked(t) == (2048, 2, "q8_0") and t.flash_attn == "on"
    # q4_0 preferred: nothing smaller to fall back to, so the context goes first
    t = autotune(s, need(s, 8192, 4, "q4_0") - 1, preferred_cache_type="q4_0")
    assert picked(t) == (4096, 4, "q4_0")
    assert picked(autotune(s, need(s, 8192, 2) - 1, max_parallel=2)) == (8192, 2, "q8_0")
    with pytest.raises(InvalidRequest, match="preferred_cache_type"):
        autotune(s, 64 * 1024 * MiB, preferred_cache_type="f8")
