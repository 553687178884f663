"""Shared prefixes (kronk/engine/engine.py): a prompt start that another slot holds, or is prefilling, is copied
instead of computed again, and the output is the same as without sharing (temperature 0)."""

from __future__ import annotations

import asyncio

import pytest

from kronk.engine import EngineConfig, GenerationRequest, SamplingParams
from kronk.engine.engine import LlamaEngine, common_prefix
from tests.models import gemma_path

# ~560 tokens of instructions every user shares (an agent's system prompt), then each user's own question
SYSTEM = "\n".join(
    f"Rule {i}: when a customer asks about order {1000 + i}, check the warehouse in city {i % 7} first, then the "
    f"courier log for day {i % 28 + 1}, and answer politely in at most {i % 5 + 2} sentences."
    for i in range(12))
QUESTIONS = ["Where is my parcel?", "Can I return shoes?", "What are your opening hours?", "Do you ship abroad?",
             "My order arrived broken.", "How do I change my address?", "Can I pay with cash?",
             "Do you sell gift cards?"]
MAX_TOKENS = 12
# At most 7 sequences generate in one step here: on this CPU llama.cpp computes a decode of 8 rows or more with
# other kernels than one row (kronk/engine/speculative.py, invariant_rows), which would change the output with
# the load whether prefixes are shared or not. Sharing is what is compared.
SLOTS = 5


def config(share: bool, parallel: int) -> EngineConfig:
    return EngineConfig(batch_invariant=True,
                        model_path=gemma_path(), name="gemma3-270m", parallel=parallel, ctx_size=1024,
                        share_prefixes=share)


async def generate(engine: LlamaEngine, prompt: list[int], max_tokens: int = MAX_TOKENS) -> tuple[list[int], int]:
    """The tokens of a temperature-0 answer and how many prompt tokens came from the cache."""
    req = GenerationRequest(prompt=prompt, sampling=SamplingParams(temperature=0.0), max_tokens=max_tokens)
    out, cached = [], -1
    async for c in engine.generate(req):
        out += c.token_ids
        if c.usage is not None:
            cached = c.usage.cached_tokens
    return out, cached


@pytest.fixture(scope="module")
def prompts():
    e = LlamaEngine(config(False, 1))
    try:
        return [e.tokenize(f"{SYSTEM}\nCustomer: {q}\nAgent:") for q in QUESTIONS]
    finally:
        e.close()


@pytest.fixture(scope="module")
def reference(prompts):
    """Every prompt prefilled from scratch in a slot of its own (no sharing, nothing cached): four at once on
    engines that share nothing."""
    async def all_at_once(e, group):
        return await asyncio.gather(*[generate(e, p) for p in group])

    out = []
    for i in range(0, len(prompts), 4):
        e = LlamaEngine(config(False, 4))
        try:
            got = asyncio.run(all_at_once(e, prompts[i:i + 4]))
        finally:
            e.close()
        assert all(cached == 0 for _, cached in got)
        out += [tokens for tokens, _ in got]
    return out


@pytest.fixture()
def shared():
    e = LlamaEngine(config(True, SLOTS))
    yield e
    e.close()


def shared_part(engine: LlamaEngine, prompts: list[list[int]]) -> int:
    """The prefix all prompts share, in whole chunks of the prefill grid (what a slot copies)."""
    n = min(len(p) for p in prompts)
    common = next(i for i in range(n) if len({p[i] for p in prompts}) > 1)
    return common // engine.prefill_grid * engine.prefill_grid


async def test_users_arriving_at_once_prefill_the_shared_prompt_once(shared, prompts, reference):
    group = prompts[:SLOTS]
    part = shared_part(shared, group)
    assert part >= 2 * shared.prefill_grid  # the case is worth sharing: two whole chunks at least
    got = await asyncio.gather(*[generate(shared, p) for p in group])
    assert [out for out, _ in got] == reference[:SLOTS]
    cached = sorted(c for _, c in got)
    assert cached == [0] + [part] * (SLOTS - 1), cached  # one prefills it, the others copy it
    st = shared.stats()
    assert st.prompt_tokens_shared == (SLOTS - 1) * part and st.prompt_tokens_reused == (SLOTS - 1) * part


async def test_a_newcomer_copies_the_prefix_from_a_busy_slot(shared, prompts, reference):
    part = shared_part(shared, prompts)
    # one user's long answer is being generated when the next user arrives
    busy = asyncio.create_task(generate(shared, prompts[0], max_tokens=80))
    for _ in range(3000):  # at most 60 s
        if any(s["state"] == "generating" for s in shared.stats().slots):
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the first request never started generating")
    out, cached = await generate(shared, prompts[6])
    assert (out, cached) == (reference[6], part)
    assert not busy.done()  # it was copied from a slot that is still generating
    long_answer, _ = await busy
    assert long_answer[:MAX_TOKENS] == reference[0]
    # once they are idle, the next prompt goes to a slot that holds the prefix and reuses what it shares with it
    # there: all of it (a slot's own cache is not cut to the grid: it is what makes a second question fast)
    common = min(max(common_prefix(s.cache, prompts[7]) for s in shared.slots), len(prompts[7]) - 1)
    _, cached = await generate(shared, prompts[7])
    assert cached == common > part
    assert shared.stats().prompt_tokens_shared == part


async def test_a_waiting_prompt_goes_on_when_the_slot_it_waits_for_is_cancelled(shared, prompts, reference):
    first = asyncio.create_task(generate(shared, prompts[0]))
    second = asyncio.create_task(generate(shared, prompts[1]))
    await asyncio.sleep(0)  # both submitted
    first.cancel()
    out, _ = await asyncio.wait_for(second, 60)
    assert out == reference[1]
    with pytest.raises(asyncio.CancelledError):
        await first
    for _ in range(250):
        if shared.stats().active == 0:
            break
        await asyncio.sleep(0.02)
    assert shared.stats().active == 0  # nothing left holding a slot


async def test_prompts_sharing_less_than_a_grid_chunk_copy_nothing(prompts):
    e = LlamaEngine(config(True, 4))
    try:
        short = [e.tokenize(f"Customer: {q}\nAgent:") for q in QUESTIONS[:4]]
        got = await asyncio.gather(*[generate(e, p) for p in short])
        assert all(c == 0 for _, c in got) and e.stats().prompt_tokens_shared == 0
    finally:
        e.close()
