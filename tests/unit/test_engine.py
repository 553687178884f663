"""The llama.cpp engine on the real default model (Gemma 3 270M) and SmolLM2."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

from kronk.engine import EngineConfig, GenerationRequest, SamplingParams
from kronk.engine.engine import LlamaEngine
from kronk.engine.grammar import json_object_grammar, json_schema_grammar
from kronk.errors import ContextLengthExceeded, EngineError, InvalidRequest
from kronk.settings import KV_CACHE_TYPES
from tests.models import gemma_path, smollm_path

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "List of fruits:",
           "import numpy as np\n", "Dear Sir,", "1, 2, 3, 4,", "The best way to learn"]


@pytest.fixture(scope="module")
def engine():
    e = LlamaEngine(EngineConfig(batch_invariant=True,
                                 model_path=gemma_path(), name="gemma3-270m", parallel=4, ctx_size=1024,
                                 chat_template="gemma"))
    yield e
    e.close()


async def run(engine, prompt, **kw):
    """Generate from a text prompt (tokenized here, as the API layer does) or from token ids."""
    sampling = kw.pop("sampling", SamplingParams(temperature=0.0))
    tokens = engine.tokenize(prompt) if isinstance(prompt, str) else prompt
    req = GenerationRequest(prompt=tokens, sampling=sampling, **kw)
    text, tokens, last, chunks = "", [], None, []
    async for c in engine.generate(req):
        text += c.text
        tokens += c.token_ids
        chunks.append(c)
        last = c
    return text, tokens, last, chunks


async def wait_idle(engine, timeout=10.0):
    for _ in range(int(timeout / 0.02)):
        if engine.stats().active == 0:
            return True
        await asyncio.sleep(0.02)
    return False


async def test_concurrent_generations_equal_runs_alone(engine):
    alone = [(await run(engine, p, max_tokens=40))[1] for p in PROMPTS]
    together = await asyncio.gather(*[run(engine, p, max_tokens=40) for p in PROMPTS])
    assert [t[1] for t in together] == alone
    # and a repeat alone, now with the prompts' prefixes cached in the slots
    again = [(await run(engine, p, max_tokens=40))[1] for p in PROMPTS]
    assert again == alone
    assert all(len(t) == 40 for t in alone)


LONG_PROMPT = ("The old lighthouse keeper climbed the spiral stairs every evening, counting each of the one hundred "
               "and twelve steps aloud. At the top he wound the clockwork, trimmed the wick and polished the great "
               "lens until it shone. Ships passing in the night never knew his name, but they trusted the light. "
               "One winter the storms came early, and for three days the keeper did not sleep. On the fourth day")


async def test_a_small_batch_size_gives_the_same_outputs_alone_and_batched(engine):
    """batch_size 32 with 4 slots: prompts prefill in 32-token chunks (the grid follows the micro-batch), and
    every step stays within the 32-row llama_batch. Outputs are the same alone, batched and cached; and the
    same as the default batch size's for prompts within one chunk (a longer prompt is computed in chunks of
    another shape there, and llama.cpp's numbers shift with a chunk's shape: its output may differ)."""
    small = LlamaEngine(EngineConfig(batch_invariant=True,
                                     model_path=gemma_path(), parallel=4, ctx_size=1024, batch_size=32))
    try:
        assert (small.n_batch, small.prefill_grid) == (32, 32)
        prompts = [LONG_PROMPT, *PROMPTS[:3]]
        assert len(small.tokenize(LONG_PROMPT)) > 2 * 32  # three chunks, then its last token
        alone = [(await run(small, p, max_tokens=16))[1] for p in prompts]
        together = await asyncio.gather(*[run(small, p, max_tokens=16) for p in prompts])
        assert [t[1] for t in together] == alone
        again = [(await run(small, p, max_tokens=16))[1] for p in prompts]  # from the prefix cache
        assert again == alone
        assert alone[1:] == [(await run(engine, p, max_tokens=16))[1] for p in prompts[1:]]  # batch_size 512
    finally:
        small.close()


async def test_a_batch_row_past_the_llama_batch_fails_the_step_instead_of_writing_there():
    """The guard behind EngineConfig's rules (which keep every step within batch_size rows; llama.cpp itself
    aborts the process at a context with more slots than batch rows): were a chunk ever larger than the
    llama_batch, the step fails its requests with an EngineError instead of writing past the arrays."""
    e = LlamaEngine(EngineConfig(batch_invariant=True,
                                 model_path=gemma_path(), parallel=2, ctx_size=256, batch_size=16))
    try:
        assert (e.n_batch, e.prefill_grid) == (16, 16)
        e.prefill_grid = 64  # as if a bug let a chunk outgrow the batch
        with pytest.raises(EngineError, match="batch row 16 is outside the llama_batch of 16 rows"):
            await run(e, LONG_PROMPT, max_tokens=4)
        e.prefill_grid = 16
        assert await wait_idle(e)
        _, toks, last, _ = await run(e, "The capital of France is", max_tokens=4)  # the engine still serves
        assert len(toks) == 4 and last.finish_reason == "length"
    finally:
        e.close()


async def test_usage_and_finish_reasons(engine):
    text, tokens, last, _ = await run(engine, "Hello there", max_tokens=5)
    assert last.finish_reason == "length"
    assert last.usage.completion_tokens == 5 == len(tokens)
    assert last.usage.prompt_tokens == len(engine.tokenize("Hello there"))
    assert text == engine.detokenize(tokens)


async def test_stop_string_split_across_tokens(engine):
    text, tokens, _, _ = await run(engine, "Once upon a time", max_tokens=40)
    # a stop string made of the end of one token and the start of the next
    pieces = [engine.model.piece(t).decode("utf-8", "replace") for t in tokens]
    k = next(i for i in range(3, len(pieces) - 1) if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2)
    stop = pieces[k][-2:] + pieces[k + 1][:2]
    expected = text[: text.index(stop)]
    got, _, last, chunks = await run(engine, "Once upon a time", max_tokens=40, stop=[stop])
    assert last.finish_reason == "stop"
    assert got == expected
    assert all(stop not in c.text for c in chunks)


async def test_cancellation_frees_the_slot(engine):
    gen = engine.generate(GenerationRequest(prompt=engine.tokenize("Write a very long story:"),
                                            sampling=SamplingParams(temperature=0)))
    got = 0
    async for _ in gen:
        got += 1
        if got == 3:
            break
    await gen.aclose()
    assert await wait_idle(engine), engine.stats()
    _, tokens, last, _ = await run(engine, "Next request", max_tokens=3)
    assert len(tokens) == 3


async def test_second_chat_turn_prefills_only_new_tokens(engine):
    msgs = [{"role": "user", "content": "Tell me about the sea."}]
    p1 = engine.apply_chat_template(msgs)
    a1, _, l1, _ = await run(engine, p1, max_tokens=30)
    msgs += [{"role": "assistant", "content": a1}, {"role": "user", "content": "And the mountains?"}]
    p2 = engine.apply_chat_template(msgs)
    n1, n2 = len(engine.tokenize(p1)), len(engine.tokenize(p2))
    before = engine.stats()
    _, _, l2, _ = await run(engine, p2, max_tokens=10)
    after = engine.stats()
    assert l2.usage.prompt_tokens == n2
    assert l2.usage.cached_tokens >= n1 - 1  # the whole first turn came from the cache
    assert after.prompt_tokens_reused - before.prompt_tokens_reused == l2.usage.cached_tokens
    assert n2 - l2.usage.cached_tokens < n2 - n1 + 8  # only (about) the new turn was prefilled


@pytest.mark.parametrize("kv", KV_CACHE_TYPES)
async def test_every_kv_cache_type_loads_and_generates(kv):
    e = LlamaEngine(EngineConfig(batch_invariant=True,
                                 model_path=gemma_path(), parallel=1, ctx_size=256, cache_type_k=kv, cache_type_v=kv))
    try:
        text, tokens, last, _ = await run(e, "The capital of France is", max_tokens=8)
        assert len(tokens) == 8 and text.strip()
        assert e.stats().kv_bytes > 0
    finally:
        e.close()


def test_quantized_v_without_flash_attention_is_refused():
    with pytest.raises(InvalidRequest, match="flash attention"):
        LlamaEngine(EngineConfig(batch_invariant=True, model_path=gemma_path(), parallel=1, ctx_size=256,
                                 cache_type_v="q4_0", flash_attn="off"))


async def test_q8_kv_holds_about_half_the_bytes_of_f16():
    sizes = {}
    for kv in ("f16", "q8_0"):
        e = LlamaEngine(EngineConfig(batch_invariant=True,
                                     model_path=gemma_path(), parallel=1, ctx_size=512, cache_type_k=kv,
                                     cache_type_v=kv))
        try:
            await run(e, "The capital of France is Paris. " * 20, max_tokens=2)
            sizes[kv] = e.seq_state_bytes(0)
        finally:
            e.close()
    assert 0.45 < sizes["q8_0"] / sizes["f16"] < 0.6


async def test_multibyte_utf8_output_is_intact(engine):
    prompt = "Emoji row: 😀🎉🚀😀🎉🚀😀🎉🚀😀🎉🚀😀🎉🚀"
    text, tokens, _, chunks = await run(engine, prompt, max_tokens=24)
    assert any(ord(ch) > 0xFFFF for ch in text), text  # it kept writing 4-byte characters
    assert "\ufffd" not in text
    assert all("\ufffd" not in c.text for c in chunks)
    assert text == engine.detokenize(tokens)


async def test_json_object_grammar_output_parses(engine):
    prompt = 'Cat: {"name": "Tom", "age": 3}\nDog: {"name": "Rex", "age": 5}\nBird:'
    text, _, last, _ = await run(engine, prompt, max_tokens=120,
                                 sampling=SamplingParams(temperature=0, grammar=json_object_grammar()))
    assert last.finish_reason == "stop"
    assert isinstance(json.loads(text), dict)


async def test_json_schema_grammar_output_matches_schema(engine):
    schema = {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 12}, "color": {"enum": ["red", "green", "blue"]},
        "happy": {"type": "boolean"}}, "required": ["name", "color", "happy"], "additionalProperties": False}
    text, _, _, _ = await run(engine, 'Cat: {"name": "Tom", "color": "red", "happy": true}\nDog:', max_tokens=80,
                              sampling=SamplingParams(temperature=0, grammar=json_schema_grammar(schema)))
    jsonschema.validate(json.loads(text), schema)


async def test_prompt_longer_than_context_is_rejected(engine):
    with pytest.raises(ContextLengthExceeded, match="maximum context length is 1024"):
        await run(engine, "word " * 2000, max_tokens=4)
    assert (await run(engine, "still works", max_tokens=2))[2].usage.completion_tokens == 2


async def test_generation_stops_with_length_when_context_is_full():
    e = LlamaEngine(EngineConfig(batch_invariant=True, model_path=gemma_path(), parallel=1, ctx_size=64))
    try:
        _, tokens, last, _ = await run(e, "Count: 1, 2, 3,", ignore_eos=True)
        assert last.finish_reason == "length"
        # llama.cpp rounds a slot's context up (to 256 here): the answer fills exactly what there is
        assert last.usage.prompt_tokens + last.usage.completion_tokens == e.n_ctx_slot
    finally:
        e.close()


async def test_min_tokens_and_ignore_eos(engine):
    _, tokens, last, _ = await run(engine, "Hi", max_tokens=50, min_tokens=50, ignore_eos=True)
    assert len(tokens) == 50 and last.finish_reason == "length"
    eog = set(engine._eog)
    assert not eog & set(tokens)


async def test_seeded_sampling_is_reproducible(engine):
    s = SamplingParams(temperature=1.0, top_k=40, top_p=0.95, seed=1234)
    a = (await run(engine, "Once upon a time", max_tokens=30, sampling=s))[1]
    b = (await run(engine, "Once upon a time", max_tokens=30, sampling=s))[1]
    c = (await run(engine, "Once upon a time", max_tokens=30,
                   sampling=SamplingParams(temperature=1.0, seed=99)))[1]
    assert a == b
    assert a != c


async def test_logit_bias_bans_a_token(engine):
    _, tokens, _, _ = await run(engine, "The capital of France is", max_tokens=10)
    banned = tokens[0]
    _, tokens2, _, _ = await run(engine, "The capital of France is", max_tokens=10,
                                 sampling=SamplingParams(temperature=0, logit_bias={banned: float("-inf")}))
    assert banned not in tokens2


async def test_embeddings_are_normalised_and_ordered(engine):
    vecs, n = await engine.embed(["the cat sat", "a dog ran", "the cat sat"])
    assert len(vecs) == 3 and n > 0
    assert all(abs(sum(x * x for x in v) - 1.0) < 1e-4 for v in vecs)
    assert vecs[0] == pytest.approx(vecs[2], abs=1e-6)
    assert vecs[0] != pytest.approx(vecs[1], abs=1e-3)


async def test_gguf_chat_template_is_used_when_present():
    e = LlamaEngine(EngineConfig(batch_invariant=True, model_path=smollm_path(), parallel=2, ctx_size=512))
    try:
        prompt = e.apply_chat_template([{"role": "user", "content": "Hi"}])
        assert "<|im_start|>user" in prompt and prompt.rstrip().endswith("assistant")
        text, _, last, _ = await run(e, prompt, max_tokens=20)
        assert last.finish_reason in ("stop", "length") and "<|im_end|>" not in text
    finally:
        e.close()


async def test_grammar_with_suppressed_eos_ends_instead_of_crashing(engine):
    # Once the JSON document is complete only end-of-generation is allowed; ignore_eos bans it.
    prompt = 'Cat: {"name": "Tom", "age": 3}\nDog:'
    text, _, last, _ = await run(engine, prompt, max_tokens=200, ignore_eos=True,
                                 sampling=SamplingParams(temperature=0, grammar=json_object_grammar()))
    assert last.finish_reason in ("stop", "length")
    if last.finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    assert (await run(engine, "still alive", max_tokens=2))[2].usage.completion_tokens == 2


async def test_logit_bias_banning_every_grammar_token_ends_the_request(engine):
    # the grammar of a single digit, with every digit token banned: nothing is allowed
    m = engine.model
    digits = {t: float("-inf") for t in range(m.n_vocab) if m.piece(t) in [d.encode() for d in "0123456789"]}
    assert digits
    text, tokens, last, _ = await run(engine, "A digit:", max_tokens=5,
                                      sampling=SamplingParams(temperature=0, grammar='root ::= [0-9]',
                                                              logit_bias=digits))
    assert last.finish_reason == "stop" and tokens == []
    assert (await run(engine, "still alive", max_tokens=2))[2].usage.completion_tokens == 2


def single_token(engine, text):
    tokens = engine.tokenize(text, False, False)
    assert len(tokens) == 1, tokens
    return tokens[0]


async def test_json_mode_loop_is_ended_by_the_repetition_guard(engine):
    # Force a loop on any CPU: a huge bias on "a" makes greedy JSON mode write {"aaaa... forever inside
    # one string (the grammar never lets it close the string for it), with no token limit.
    prompt = 'Cat: {"name": "Tom", "age": 3}\nDog:'
    text, tokens, last, _ = await run(engine, prompt, sampling=SamplingParams(
        temperature=0, grammar=json_object_grammar(), logit_bias={single_token(engine, "a"): 100.0}))
    assert text.startswith('{"') and text.endswith("a" * 60), text
    assert last.finish_reason == "length"
    # a cycle of one token trips after 64 of them: far below the 1024-token slot it would fill
    assert 64 <= last.usage.completion_tokens == len(tokens) < 100 < engine.n_ctx_slot
    assert await wait_idle(engine)


async def test_a_run_of_blanks_in_json_mode_is_ended(engine):
    prompt = 'Cat: {"name": "Tom", "age": 3}\nDog:'
    text, tokens, last, _ = await run(engine, prompt, sampling=SamplingParams(
        temperature=0, grammar=json_object_grammar(), logit_bias={single_token(engine, " "): 100.0}))
    assert last.finish_reason == "length"
    assert text.endswith(" " * 32) and 32 <= len(tokens) < 64  # the whitespace cap, before the cycle span


async def test_repetition_guard_can_be_turned_off_or_on_for_any_request(engine):
    prompt = 'Cat: {"name": "Tom", "age": 3}\nDog:'
    bias = {single_token(engine, "a"): 100.0}
    # off: the same forced loop as above runs on to its token limit
    _, tokens, last, _ = await run(engine, prompt, max_tokens=100, repetition_guard=False,
                                   sampling=SamplingParams(temperature=0, grammar=json_object_grammar(),
                                                           logit_bias=bias))
    assert last.finish_reason == "length" and len(tokens) == 100
    # on without a grammar (the API layer may guard every request)
    text, tokens, last, _ = await run(engine, prompt, repetition_guard=True,
                                      sampling=SamplingParams(temperature=0, logit_bias=bias))
    assert last.finish_reason == "length" and len(tokens) == 64 and text == "a" * 64
