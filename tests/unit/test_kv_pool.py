"""A shared KV pool (kv_unified): many slots in the memory of a few contexts, on the real default model.

The slots' sequences share one pool of ``kv_pool_tokens`` cells (llama.cpp's unified KV cache). When it runs
out, idle slots' caches go first, then the newest running request is swapped out to host memory and comes back
when there is room (kronk/engine/engine.py): every request still finishes, and nothing is held afterwards.
"""

from __future__ import annotations

import asyncio
import ctypes
from typing import Any

import llama_cpp
import pytest

from kronk.engine import EngineConfig, GenerationRequest, SamplingParams
from kronk.engine.config import EngineSettingsError
from kronk.engine.engine import LlamaEngine
from kronk.engine.memory import estimate_for, read_shape
from kronk.engine.slots import SlotState
from kronk.settings import Settings
from tests.helpers import GEMMA
from tests.models import gemma_path


def make_engine(**cfg: Any) -> LlamaEngine:
    return LlamaEngine(EngineConfig(model_path=gemma_path(), name=GEMMA, threads=1, batch_invariant=False, **cfg))


def request(engine: LlamaEngine, text: str, n: int) -> GenerationRequest:
    return GenerationRequest(prompt=engine.tokenize(text), max_tokens=n, ignore_eos=True,
                             sampling=SamplingParams(temperature=0.0), request_id=text[:12])


async def run_all(engine: LlamaEngine, reqs: list[GenerationRequest]) -> list[tuple[list[int], str | None]]:
    async def one(r: GenerationRequest) -> tuple[list[int], str | None]:
        toks: list[int] = []
        reason = None
        async for c in engine.generate(r):
            toks += c.token_ids
            reason = c.finish_reason or reason
        return toks, reason

    return await asyncio.gather(*(one(r) for r in reqs))


def test_settings_derive_the_pool_and_refuse_it_with_batch_invariance():
    cfg = EngineConfig(model_path="x.gguf", batch_invariant=False, ctx_size=2048)
    assert cfg.unified and cfg.pool_cells == 4 * 2048
    assert EngineConfig(model_path="x.gguf", batch_invariant=False, kv_pool_tokens=5000).pool_cells == 5000
    assert not EngineConfig(model_path="x.gguf", batch_invariant=True).unified
    assert not EngineConfig(model_path="x.gguf", batch_invariant=False, kv_unified=False).unified
    with pytest.raises(EngineSettingsError, match="kv_unified needs batch_invariant false"):
        EngineConfig(model_path="x.gguf", batch_invariant=True, kv_unified=True)
    with pytest.raises(ValueError, match="kv_unified needs batch_invariant false"):
        Settings(_env_file=None, batch_invariant=True, kv_unified=True)
    with pytest.raises(ValueError, match="model m: kv_unified needs batch_invariant false"):
        Settings(_env_file=None, models=[{"name": "m", "batch_invariant": True, "kv_unified": True}])
    # 16 slots in a pool of 4 contexts are many slots in the memory of a few: the estimate counts the pool
    shape = read_shape(gemma_path())
    pooled = estimate_for(shape, EngineConfig(model_path=gemma_path(), parallel=16, ctx_size=2048,
                                              batch_invariant=False))
    four = estimate_for(shape, EngineConfig(model_path=gemma_path(), parallel=4, ctx_size=2048,
                                            batch_invariant=True))
    sixteen = estimate_for(shape, EngineConfig(model_path=gemma_path(), parallel=16, ctx_size=2048,
                                               batch_invariant=True))
    assert pooled.kv_cells == four.kv_cells == 4 * 2048
    assert pooled.kv_bytes == four.kv_bytes < sixteen.kv_bytes


def test_more_requests_than_the_pool_holds_all_finish_and_free_everything():
    # 4 slots in 512 cells: 4 requests of 17 + 150 tokens need 668 cells, so some are swapped out and back
    e = make_engine(parallel=4, ctx_size=256, kv_pool_tokens=512)
    try:
        assert e.unified and e.pool_cells == 512 and e.n_ctx_slot == 256
        reqs = [request(e, f"Story {i}: once upon a time, in a land far away, there lived", 150) for i in range(4)]
        results = asyncio.run(run_all(e, reqs))
        for toks, reason in results:
            assert len(toks) == 150 and reason == "length"
        st = e.stats()
        assert st.kv_unified and st.kv_cells_total == 512
        assert st.preemptions >= 1
        assert st.swapped == 0 and st.waiting == 0 and st.active == 0
        assert all(s.state is SlotState.IDLE and s.job is None for s in e.slots)
        # what the slots hold still fits the pool (llama.cpp's own view of each sequence)
        held = sum(llama_cpp.llama_memory_seq_pos_max(e.mem, s.id) + 1 for s in e.slots)
        assert held == sum(s.n_past for s in e.slots) <= 512
        # and the engine serves on: one more request, alone, has the whole pool
        (toks, reason), = asyncio.run(run_all(e, [request(e, "The sea was calm and", 40)]))
        assert len(toks) == 40 and reason == "length"
    finally:
        e.close()


def test_a_swapped_out_request_comes_back_with_exactly_its_state():
    e = make_engine(parallel=2, ctx_size=512, kv_pool_tokens=1024)
    try:
        (toks, _), = asyncio.run(run_all(e, [request(e, "The history of the lighthouse begins with", 60)]))
        src = max(e.slots, key=lambda s: s.n_past)
        dst = next(s for s in e.slots if s is not src)
        with e._cv:  # the decode thread has no work: it waits on this lock's condition until released
            loop = asyncio.new_event_loop()
            try:
                job = loop.run_until_complete(_job(e))
                tokens = list(src.cache)
                before = _state(e, src.id)
                src.job, src.state, src.next_token = job, SlotState.GENERATING, toks[-1]
                job.started = 1.0
                e._swap_out(src)
                assert job.swapped is not None and list(e._swapped) == [job]
                assert src.job is None and src.n_past == 0
                assert llama_cpp.llama_memory_seq_pos_max(e.mem, src.id) == -1
                assert e._swap_in(dst, job)
                e._swapped.clear()
                assert dst.job is job and dst.cache == tokens and dst.state is SlotState.GENERATING
                assert dst.next_token == toks[-1]
                # and back into its first slot (llama.cpp's state bytes name the sequence): the same KV, byte
                # for byte
                e._swap_out(dst)
                assert dst.n_past == 0 and e._swap_in(src, job)
                e._swapped.clear()
                assert src.cache == tokens and _state(e, src.id) == before
                src.job = None
                src.state = SlotState.IDLE
                job.free_samplers()
            finally:
                loop.close()
        assert e.stats().preemptions == 2
    finally:
        e.close()


async def _job(e: LlamaEngine):
    return e._make_job(request(e, "The history of the lighthouse begins with", 5))


def _state(e: LlamaEngine, seq: int) -> bytes:
    size = int(llama_cpp.llama_state_seq_get_size(e.ctx, seq))
    buf = (ctypes.c_uint8 * size)()
    assert llama_cpp.llama_state_seq_get_data(e.ctx, buf, size, seq) == size
    return bytes(buf)
