"""Speculative decoding (kronk/engine/speculative.py, LlamaEngine._drafts/_verify) on the real small models:
the prompt-lookup drafter on token lists, and output with speculation on equal to the output with it off."""

from __future__ import annotations

import asyncio

import pytest

from kronk.engine import EngineConfig, GenerationRequest, SamplingParams
from kronk.engine.config import EngineSettingsError
from kronk.engine.engine import LlamaEngine
from kronk.engine.protocol import EngineStats
from kronk.engine.speculative import NgramDraft
from kronk.errors import EngineError
from kronk.telemetry import prometheus
from kronk.telemetry.metrics import Recorder
from kronk.telemetry.stats import summarize
from tests.models import gemma_path, smollm_path

TEXT = ("The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. "
        "All that glitters is not gold. Where there is a will, there is a way.")
REPEAT = f"Repeat this text exactly.\nText: {TEXT}\nRepeated text: {TEXT[:30]}"
CODE = ("def area(width, height):\n    return width * height\n\n\ndef perimeter(width, height):\n"
        "    return 2 * (width + height)\n\n\n# the same two functions, renamed w and h\ndef area(w, h):\n")
FREE = "Once upon a time"


# ------------------------------------------------------------------ the drafter alone
def test_ngram_draft_proposes_what_followed_the_latest_earlier_occurrence():
    d = NgramDraft(1, 3)
    ctx = [1, 2, 3, 9, 9, 1, 2, 3, 7, 8, 5, 1, 2, 3]
    # the last 3 tokens [1, 2, 3] occurred twice before; the latest (ending at 7) was followed by 7, 8, 5
    assert d.draft(ctx, 3) == [7, 8, 5]
    assert NgramDraft(1, 3).draft(ctx, 2) == [7, 8]  # at most k
    assert NgramDraft(1, 3).draft(ctx, 0) == []


def test_ngram_draft_prefers_the_longest_match_and_falls_back_to_shorter_ones():
    # [4, 5] occurred once (followed by 6); [5] alone occurred later (followed by 1): the 2-gram wins
    ctx = [4, 5, 6, 0, 5, 1, 2, 4, 5]
    assert NgramDraft(1, 3).draft(ctx, 1) == [6]
    # with only 1-grams the latest 5 (followed by 1) is used
    assert NgramDraft(1, 1).draft(ctx, 2) == [1, 2]
    # n_min 2 and no earlier 2-gram match: nothing
    assert NgramDraft(2, 3).draft([1, 2, 3, 4, 3], 4) == []
    assert NgramDraft(1, 3).draft([7], 4) == [] and NgramDraft(1, 3).draft([], 4) == []


def test_ngram_draft_grows_with_its_context_and_may_propose_a_short_continuation():
    d = NgramDraft(1, 2)
    ctx = [1, 2, 3]
    assert d.draft(ctx, 4) == []
    ctx += [1, 2]  # [1, 2] occurred at 0..1, followed by 3, 1, 2 (the continuation runs into the recent tokens)
    assert d.draft(ctx, 4) == [3, 1, 2]
    ctx += [3, 1]
    assert d.draft(ctx, 2) == [2, 3]  # the latest [3, 1] is the one ending at 3 (not the last token itself)
    # a run of one token drafts the run
    assert NgramDraft(1, 3).draft([5, 5, 5, 5], 3) == [5]
    with pytest.raises(ValueError):
        NgramDraft(3, 2)


# ------------------------------------------------------------------ engines
def _engine(path: str, speculative: str, **kw) -> LlamaEngine:
    kw.setdefault("parallel", 4)
    return LlamaEngine(EngineConfig(batch_invariant=True, model_path=path, ctx_size=512, speculative=speculative, **kw))


@pytest.fixture(scope="module")
def gemma():
    on, off = _engine(gemma_path(), "ngram"), _engine(gemma_path(), "off")
    yield on, off
    on.close()
    off.close()


@pytest.fixture(scope="module")
def smol():
    on, off = _engine(smollm_path(), "ngram"), _engine(smollm_path(), "off")
    yield on, off
    on.close()
    off.close()


async def run(engine, prompt, max_tokens=32, temperature=0.0, seed=None, **kw):
    req = GenerationRequest(prompt=engine.tokenize(prompt), max_tokens=max_tokens,
                            sampling=SamplingParams(temperature=temperature, seed=seed), **kw)
    text, tokens, chunks = "", [], []
    async for c in engine.generate(req):
        text += c.text
        tokens += c.token_ids
        chunks.append(c)
    return text, tokens, chunks


def test_speculation_is_on_where_asked_and_off_where_not(gemma, smol):
    for on, off in (gemma, smol):
        assert on.speculative == "ngram" and on.spec_rows >= 2  # a multi-row verify is exact on these models
        assert off.speculative == "off" and off.stats().speculative == "off"


@pytest.mark.parametrize("which", ["gemma", "smol"])
@pytest.mark.parametrize("prompt", [REPEAT, CODE, FREE])
async def test_greedy_output_is_the_same_with_speculation_on_and_off(which, prompt, request):
    on, off = request.getfixturevalue(which)
    before = on.stats()
    got, want = await run(on, prompt), await run(off, prompt)
    assert got[1] == want[1] and got[0] == want[0]
    assert got[2][-1].finish_reason == want[2][-1].finish_reason
    after = on.stats()
    if prompt is not FREE:  # the answer repeats its prompt: drafts were verified and accepted
        assert after.spec_accepted_tokens > before.spec_accepted_tokens
        assert after.spec_draft_tokens > before.spec_draft_tokens
        assert any(len(c.token_ids) > 1 for c in got[2])  # a step emitted several tokens
    accepted = after.spec_accepted_tokens - before.spec_accepted_tokens
    assert accepted <= after.spec_draft_tokens - before.spec_draft_tokens


async def test_concurrent_slots_with_speculation_each_equal_their_solo_output(gemma):
    on, off = gemma
    prompts = [REPEAT, CODE, FREE, "1, 2, 3, 4, 5, 6, 1, 2, 3,"]
    solo = [(await run(off, p, max_tokens=24))[1] for p in prompts]
    together = await asyncio.gather(*[run(on, p, max_tokens=24) for p in prompts])
    assert [t[1] for t in together] == solo
    two = await asyncio.gather(*[run(on, p, max_tokens=24) for p in prompts[:2]])  # rows shared by two slots
    assert [t[1] for t in two] == solo[:2]


async def test_a_verify_decode_never_holds_more_rows_than_are_exact(gemma):
    on, _ = gemma
    sizes: list[int] = []
    real = on._decode_in_pool

    def spy(n: int) -> bool:
        if on.batch.logits[0]:  # a generation decode (prompt chunks take no logits)
            sizes.append(n)
        return real(n)

    on._decode_in_pool = spy
    try:
        await asyncio.gather(run(on, REPEAT, max_tokens=24), run(on, CODE, max_tokens=24))
    finally:
        del on._decode_in_pool
    assert sizes and max(sizes) <= max(on.spec_rows, 2)
    assert max(sizes) > 2  # and speculation did add rows


async def test_max_tokens_and_stop_strings_end_exactly_where_they_do_without_speculation(gemma):
    on, off = gemma
    full_text, full, _ = await run(off, REPEAT, max_tokens=32)
    for n in (1, 2, 5, 9, 17):  # ends inside a step that accepted several tokens
        got = await run(on, REPEAT, max_tokens=n)
        assert got[1] == full[:n]
        assert got[2][-1].finish_reason == "length" and got[2][-1].usage.completion_tokens == n
    stop = full_text[len(full_text) // 2:len(full_text) // 2 + 6]
    want, got = await run(off, REPEAT, stop=[stop]), await run(on, REPEAT, stop=[stop])
    assert got[0] == want[0] and stop not in got[0]
    assert got[2][-1].finish_reason == want[2][-1].finish_reason == "stop"
    assert got[2][-1].stop_match == stop and got[2][-1].usage.completion_tokens == want[2][-1].usage.completion_tokens


async def test_logprobs_are_the_same_with_speculation(gemma):
    on, off = gemma
    want, got = await run(off, CODE, logprobs=3), await run(on, CODE, logprobs=3)
    a = [lp for c in want[2] for lp in (c.logprobs or [])]
    b = [lp for c in got[2] for lp in (c.logprobs or [])]
    assert len(b) == len(got[1]) == len(want[1]) and a == b


async def test_seeded_sampling_is_the_same_with_speculation(smol):
    """A sampled request speculates too: each row is sampled by its chain, a token equal to the draft accepted
    (llama.cpp's rule), so every emitted token is one draw of the chain, as without speculation."""
    on, off = smol
    for seed in (1, 2):
        got = await run(on, REPEAT, temperature=0.7, seed=seed)
        want = await run(off, REPEAT, temperature=0.7, seed=seed)
        assert got[1] == want[1]


async def test_a_draft_model_of_the_same_vocabulary_verifies_the_same_way():
    path = smollm_path()
    on = _engine(path, "draft", draft_model=path, parallel=2, draft_max=4)
    off = _engine(path, "off", parallel=2)
    try:
        assert on.speculative == "draft"
        for prompt in (FREE, CODE):
            assert (await run(on, prompt))[1] == (await run(off, prompt))[1]
        st = on.stats()
        # the model drafting for itself at temperature 0: nearly every guess is right
        assert st.spec_draft_tokens > 0 and st.spec_accepted_tokens >= 0.8 * st.spec_draft_tokens
    finally:
        on.close()
        off.close()


def test_a_draft_model_of_another_vocabulary_is_refused():
    with pytest.raises(EngineError, match="vocabulary"):
        _engine(smollm_path(), "draft", draft_model=gemma_path(), parallel=1)


def test_impossible_speculation_settings_are_refused():
    with pytest.raises(EngineSettingsError, match="draft_model"):
        EngineConfig(model_path="x.gguf", speculative="draft")
    with pytest.raises(EngineSettingsError, match="spec_ngram_min"):
        EngineConfig(model_path="x.gguf", spec_ngram_min=4, spec_ngram_max=2)
    with pytest.raises(EngineSettingsError, match="draft_min"):
        EngineConfig(model_path="x.gguf", draft_min=5, draft_max=2)


def test_acceptance_reaches_stats_and_prometheus():
    rec = Recorder("llm", "r1", model="m")

    def sample(drafted: int, accepted: int) -> EngineStats:
        return EngineStats(model="m", n_slots=1, n_ctx_slot=64, active=0, waiting=0, kv_cells_used=0,
                           kv_cells_total=64, kv_bytes=0, prompt_tokens=0, prompt_tokens_reused=0,
                           completion_tokens=0, requests=0, slots=[], speculative="ngram",
                           spec_draft_tokens=drafted, spec_accepted_tokens=accepted)

    rec.on_engine_stats(sample(0, 0))
    # a counter never increased has no series, as on Ray's exporter (both endpoints must show the same samples)
    before = {n for n, _, _ in prometheus.parse(prometheus.render([rec.snapshot()]))}
    assert "kronk_spec_draft_tokens_total" not in before and "kronk_spec_acceptance_ratio" in before
    assert summarize([rec.snapshot()])["m"]["speculative"]["draft_tokens"] == 0
    rec.on_engine_stats(sample(10, 4))
    rec.on_engine_stats(sample(40, 30))
    m = summarize([rec.snapshot()])["m"]
    assert m["speculative"] == {"draft_tokens": 40, "accepted_tokens": 30, "acceptance_rate": 0.75}
    assert m["engine"]["spec_acceptance_rate"] == 0.75 and m["engine"]["speculative"] == ["ngram"]
    got = {(n, lb["model"]): v for n, lb, v in prometheus.parse(prometheus.render([rec.snapshot()]))}
    assert got[("kronk_spec_draft_tokens_total", "m")] == 40
    assert got[("kronk_spec_accepted_tokens_total", "m")] == 30
    assert got[("kronk_spec_acceptance_ratio", "m")] == 0.75
