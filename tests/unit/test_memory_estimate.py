"""The memory estimate (kronk/engine/memory.py): GGUF headers read without loading, llama.cpp's own view of the
same models, and the estimate against the measured RSS growth of a real engine (docs/memory.md)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFWriter

from kronk.engine import EngineConfig
from kronk.engine.memory import (
    EMBEDDING_UBATCH,
    GGUFFormatError,
    MemoryEstimate,
    ModelShape,
    bytes_per_element,
    context_cells,
    estimate,
    estimate_for,
    read_shape,
    swa_cells,
)
from tests.models import gemma_path, smollm_path

MiB = 1024 * 1024


# ------------------------------------------------------------------------------------------- synthetic GGUFs
def write_gguf(path: Path, arch: str, meta: dict, tensors: dict[str, np.ndarray],
               split_max_tensors: int = 0) -> Path:
    """A small GGUF (split in parts of ``split_max_tensors`` tensors if asked); returns its first file."""
    w = GGUFWriter(path, arch, split_max_tensors=split_max_tensors)
    for key, value in meta.items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_array(key, value)
    for name, t in tensors.items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path if not split_max_tensors else path.with_name(f"{path.stem}-00001-of-{len(tensors):05d}.gguf")


LLAMA_META = {"llama.block_count": 4, "llama.embedding_length": 256, "llama.attention.head_count": 8,
              "llama.attention.head_count_kv": 2, "llama.context_length": 2048, "llama.feed_forward_length": 512}
TENSORS = {"a": np.zeros((16, 32), dtype=np.float32), "b": np.zeros(100, dtype=np.float16)}


def test_the_header_gives_the_shape_and_the_tensor_bytes(tmp_path):
    meta = {**LLAMA_META, "tokenizer.ggml.tokens": [f"t{i}" for i in range(5000)],  # a long array: skipped
            "general.sampling.temp": 0.7, "general.sampling.top_k": 40}
    s = read_shape(write_gguf(tmp_path / "m.gguf", "llama", meta, TENSORS))
    assert (s.architecture, s.n_layer, s.n_embd, s.n_ff, s.n_ctx_train, s.n_vocab) == ("llama", 4, 256, 512, 2048,
                                                                                        5000)
    assert s.n_head == (8,) * 4 and s.n_head_kv == (2,) * 4
    assert (s.head_dim_k, s.head_dim_v) == (32, 32)  # n_embd / n_head, as llama.cpp defaults them
    assert s.weights_bytes == 16 * 32 * 4 + 100 * 2
    assert not s.has_swa and s.swa_layers == (False,) * 4
    assert s.sampling["temp"] == pytest.approx(0.7) and s.sampling["top_k"] == 40


def test_per_layer_kv_heads_head_sizes_and_a_sliding_window_pattern_array(tmp_path):
    meta = {**LLAMA_META, "llama.attention.head_count_kv": [2, 0, 4, 2], "llama.attention.key_length": 64,
            "llama.attention.value_length": 48, "llama.attention.sliding_window": 128,
            "llama.attention.sliding_window_pattern": [True, False, True, False]}
    s = read_shape(write_gguf(tmp_path / "m.gguf", "llama", meta, TENSORS))
    assert s.n_head_kv == (2, 0, 4, 2) and (s.head_dim_k, s.head_dim_v) == (64, 48)
    assert s.swa_layers == (True, False, True, False) and s.n_swa == 128
    # f16: per cell, the SWA layers (0 and 2: 6 KV heads) and the global ones (1 and 3: 2 heads)
    assert s.kv_row_bytes("f16", "f16", swa=True) == 6 * (64 + 48) * 2
    assert s.kv_row_bytes("f16", "f16", swa=False) == 2 * (64 + 48) * 2
    assert s.kv_row_bytes("q8_0", "q4_0", swa=False) == 2 * (64 * 34 / 32 + 48 * 18 / 32)


def test_gemma3_without_a_pattern_key_has_every_sixth_layer_global(tmp_path):
    meta = {"gemma3.block_count": 18, "gemma3.embedding_length": 640, "gemma3.attention.head_count": 4,
            "gemma3.attention.head_count_kv": 1, "gemma3.attention.sliding_window": 512}
    s = read_shape(write_gguf(tmp_path / "g.gguf", "gemma3", meta, TENSORS))
    assert [il for il, swa in enumerate(s.swa_layers) if not swa] == [5, 11, 17]


def test_a_split_gguf_counts_the_tensors_of_every_part(tmp_path):
    first = write_gguf(tmp_path / "big.gguf", "llama", LLAMA_META, TENSORS, split_max_tensors=1)
    assert first.name == "big-00001-of-00002.gguf"
    assert read_shape(first).weights_bytes == 16 * 32 * 4 + 100 * 2
    first.with_name("big-00002-of-00002.gguf").unlink()
    with pytest.raises(GGUFFormatError, match=r"missing big-00002-of-00002\.gguf"):
        read_shape(first)


def test_what_is_not_a_gguf_is_refused_by_name(tmp_path):
    (tmp_path / "empty.gguf").write_bytes(b"")
    (tmp_path / "text.gguf").write_text("hello, not a model")
    whole = write_gguf(tmp_path / "m.gguf", "llama", LLAMA_META, TENSORS).read_bytes()
    (tmp_path / "cut.gguf").write_bytes(whole[:200])
    for name, what in (("empty", "not a GGUF"), ("text", "not a GGUF"), ("cut", "ends early"),
                       ("absent", "cannot read")):
        with pytest.raises(GGUFFormatError, match=what):
            read_shape(tmp_path / f"{name}.gguf")


# ------------------------------------------------------------------------------------------- the arithmetic
def test_bytes_per_element_follow_ggml_blocks():
    assert [bytes_per_element(t) for t in ("f32", "f16", "bf16")] == [4, 2, 2]
    assert bytes_per_element("q8_0") == 34 / 32 and bytes_per_element("q4_0") == 18 / 32
    assert bytes_per_element("q4_1") == 20 / 32 and bytes_per_element("q5_0") == 22 / 32
    assert bytes_per_element("q5_1") == 24 / 32 and bytes_per_element("iq4_nl") == 18 / 32
    with pytest.raises(ValueError, match="unknown KV cache type"):
        bytes_per_element("q2_k")


def test_context_cells_round_as_llama_cpp_does():
    assert context_cells(4096, 4) == (4096, 4)
    assert context_cells(1000, 3) == (1024, 3)  # 3000 -> 3072 in all, 1024 a stream
    assert context_cells(100, 1) == (256, 1)
    assert context_cells(1000, 3, kv_unified=True) == (3072, 1)


def _shape(**kw) -> ModelShape:
    base = dict(path="x.gguf", architecture="gemma3", n_layer=6, n_embd=640, n_ff=2048, n_head=(4,) * 6,
                n_head_kv=(1,) * 6, head_dim_k=256, head_dim_v=256, head_dim_k_swa=256, head_dim_v_swa=256,
                n_swa=512, swa_layers=(True,) * 5 + (False,), n_ctx_train=32768, n_vocab=1000, weights_bytes=0)
    return ModelShape(**{**base, **kw})


def test_sliding_window_layers_hold_the_window_and_a_micro_batch_unless_full():
    s = _shape()
    assert swa_cells(s, 8192, 512, 4, kv_unified=False, swa_full=False) == 1024  # 512 + 512, per stream
    assert swa_cells(s, 8192, 100, 4, kv_unified=False, swa_full=False) == 768  # padded to 256
    assert swa_cells(s, 8192, 512, 4, kv_unified=True, swa_full=False) == 2560  # one stream: 4 windows
    assert swa_cells(s, 512, 512, 1, kv_unified=False, swa_full=False) == 512  # never more than the cache
    assert swa_cells(s, 8192, 512, 4, kv_unified=False, swa_full=True) == 8192
    per_cell = 256 * 2 * 2  # one KV head of 256, K and V, f16
    e = estimate(s, 8192, 4, swa_full=False)
    assert e.kv_bytes == 4 * (8192 * 1 + 1024 * 5) * per_cell
    assert estimate(s, 8192, 4, swa_full=True).kv_bytes == 4 * 8192 * 6 * per_cell
    assert (e.kv_cells, e.kv_cells_swa) == (4 * 8192, 4 * 1024)


def test_the_estimate_adds_up_and_grows_with_what_it_should():
    s = _shape(weights_bytes=100 * MiB)
    e = estimate(s, 4096, 2, swa_full=True)
    assert e.total_bytes == e.weights_bytes + e.kv_bytes + e.compute_bytes + e.overhead_bytes
    assert estimate(s, 8192, 2, swa_full=True).kv_bytes == 2 * e.kv_bytes
    assert estimate(s, 4096, 2, "q8_0", "q8_0", swa_full=True).kv_bytes == pytest.approx(e.kv_bytes * 34 / 64)
    assert estimate(s, 4096, 2, flash_attn=False).compute_bytes > e.compute_bytes  # attention scores
    # on a GPU the whole reservation (a micro-batch, a row of logits per token) is committed; on the CPU only
    # what kronk's steps use (prompt chunks of 256 tokens)
    cpu = estimate(s, 4096, 2, prefill_chunk=256).compute_bytes
    assert estimate(s, 4096, 2, gpu=True).compute_bytes > cpu
    assert isinstance(e, MemoryEstimate) and "weights 100 MiB" in e.describe()


def test_the_embeddings_micro_batch_is_the_engines():
    from kronk.engine import embeddings

    assert embeddings.UBATCH == EMBEDDING_UBATCH


# ------------------------------------------------------------------------------------------- the real models
@pytest.mark.parametrize("path", [gemma_path, smollm_path], ids=["gemma", "smollm"])
def test_the_shape_is_what_llama_cpp_reads(path):
    import llama_cpp

    from kronk.engine.model import LlamaModel

    s = read_shape(path())
    m = LlamaModel(path())
    try:
        assert s.n_layer == llama_cpp.llama_model_n_layer(m.ptr)
        assert s.n_embd == m.n_embd and s.n_ctx_train == m.n_ctx_train and s.n_vocab == m.n_vocab
        assert s.n_head[0] == llama_cpp.llama_model_n_head(m.ptr)
        assert s.n_head_kv[0] == llama_cpp.llama_model_n_head_kv(m.ptr)
        assert s.n_swa == llama_cpp.llama_model_n_swa(m.ptr)
        assert s.weights_bytes == m.size_bytes
    finally:
        m.close()


def test_gemma3_270m_is_read_as_llama_cpp_builds_it():
    s = read_shape(gemma_path())
    assert (s.architecture, s.n_layer, s.n_swa) == ("gemma3", 18, 512)
    assert [il for il, swa in enumerate(s.swa_layers) if not swa] == [5, 11, 17]
    assert (s.head_dim_k, s.head_dim_v, s.n_head_kv[0]) == (256, 256, 1)


# (model, slots, context per slot, KV type): 4096 and 16384 cells in all, f16 and q8_0, on both models.
# (model, slots, ctx_size, KV type, batch_invariant): a KV stream per slot, and the default shared pool of 16
# slots in 4 x ctx_size cells (with repacked weights)
CASES = [(m, p, 4096, kv, True) for m in ("gemma", "smollm") for p in (1, 4) for kv in ("f16", "q8_0")]
CASES += [(m, 16, 1024, "f16", False) for m in ("gemma", "smollm")]
TOLERANCE = 0.15
_KV_LOG = re.compile(r"KV buffer size =\s*([\d.]+) MiB")
_PROMPT = "The lighthouse keeper climbed the stairs and counted every step aloud. " * 30


def _config(model: str, parallel: int, ctx: int, kv: str, invariant: bool) -> EngineConfig:
    path = gemma_path() if model == "gemma" else smollm_path()
    # speculative off: its start-up probe (a 256-cell context, freed at once; kronk.engine.speculative
    # invariant_rows) would be logged as a KV allocation of the first case of each model; prompt lookup itself
    # allocates no KV, so the steady state is the same
    return EngineConfig(model_path=path, parallel=parallel, ctx_size=ctx, cache_type_k=kv, cache_type_v=kv,
                        llama_log=True, speculative="off", batch_invariant=invariant)


def measure(cases: list[tuple]) -> list[dict]:
    """In this process, for each case: the RSS growth from creating its engine and running one generation on
    it (a whole prefill chunk of 256 tokens, so its buffers are used, the prompt's last token, 4 more). Every
    engine stays alive until the end, so no case reuses memory another one freed; llama.cpp's log (stderr)
    gets a line ``CASE i`` before each."""
    import asyncio
    import gc

    import psutil

    from kronk.engine import GenerationRequest, SamplingParams
    from kronk.engine.engine import LlamaEngine
    from kronk.engine.model import init_backend

    init_backend(True)
    proc = psutil.Process()
    engines, out = [], []

    async def generate(engine: LlamaEngine, prompt: list[int]) -> int:
        req = GenerationRequest(prompt=prompt, sampling=SamplingParams(temperature=0.0), max_tokens=4,
                                ignore_eos=True)
        return sum([len(c.token_ids) async for c in engine.generate(req)])

    try:
        for i, case in enumerate(cases):
            print(f"CASE {i}", file=sys.stderr, flush=True)
            gc.collect()
            before = proc.memory_info().rss
            engine = LlamaEngine(_config(*case))  # with llama.cpp's log: its buffer sizes
            init_backend(False)  # and without it while generating (it logs every graph it builds)
            engines.append(engine)
            n = asyncio.run(generate(engine, engine.tokenize(_PROMPT)[:257]))
            gc.collect()
            out.append({"grown": proc.memory_info().rss - before, "generated": n})
    finally:
        for e in engines:
            e.close()
    return out


@pytest.fixture(scope="module")
def measured() -> list[tuple[dict, float]]:
    """``measure(CASES)`` in a process of its own (one that freed memory before, as this one after other
    tests' engines, would reuse it and grow less), with the KV bytes llama.cpp logged for each case."""
    code = ("import json, sys; from tests.unit.test_memory_estimate import CASES, measure; "
            "print('RESULT ' + json.dumps(measure(CASES)))")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
    logs = re.split(r"^CASE \d+$", out.stderr, flags=re.M)[1:]
    assert len(results) == len(logs) == len(CASES)
    return [(r, sum(float(x) for x in _KV_LOG.findall(log)) * MiB) for r, log in zip(results, logs, strict=True)]


@pytest.mark.parametrize("i", range(len(CASES)),
                         ids=[f"{m}-{p}x{c}-{kv}" + ("" if inv else "-pool") for m, p, c, kv, inv in CASES])
def test_the_estimate_is_within_15_percent_of_the_measured_rss_growth(measured, i):
    (result, kv_logged), cfg = measured[i], _config(*CASES[i])
    est = estimate_for(cfg.model_path, cfg)
    assert result["generated"] == 4
    assert est.kv_bytes == pytest.approx(kv_logged, rel=0.005)  # the KV cache llama.cpp reports allocating
    # the RAM prefix cache fills only as slots give prompts up (none does here): the rest is what was measured
    assert est.prefix_cache_bytes == est.kv_bytes
    error = (est.total_bytes - est.prefix_cache_bytes - result["grown"]) / result["grown"]
    print(f"{CASES[i]}: estimate {est.describe()}; measured {result['grown'] / MiB:.0f} MiB: {error:+.1%}")
    assert abs(error) <= TOLERANCE, f"estimate {est.describe()} vs measured {result['grown'] / MiB:.0f} MiB"


def test_estimate_for_sizes_what_the_engine_creates():
    smol = read_shape(smollm_path())  # trained for 8192 tokens: the engine caps a slot's context there
    e = estimate_for(smol, EngineConfig(model_path=smol.path, parallel=2, ctx_size=16384, batch_invariant=True))
    assert e.kv_cells == 2 * 8192 and e.kv_bytes == 2 * 8192 * smol.kv_row_bytes("f16", "f16", swa=False)
    # a shared pool (the default): 4 contexts of the capped ctx_size, whatever the slots
    e = estimate_for(smol, EngineConfig(model_path=smol.path, parallel=16, ctx_size=16384))
    assert e.kv_cells == 4 * 8192 and e.kv_bytes == 4 * 8192 * smol.kv_row_bytes("f16", "f16", swa=False)
    gemma = read_shape(gemma_path())
    cfg = EngineConfig(model_path=gemma.path, parallel=2, ctx_size=1024, swa_full=False, batch_invariant=True)
    plain = estimate_for(gemma, cfg)
    assert plain.kv_cells_swa == 2 * 1024 and plain.kv_cells == 2 * 1024  # window 512 + ubatch 512 = the slot
    # the embeddings context only when asked: one f16 stream of embedding_ctx (8192) cells, every layer
    with_embeddings = estimate_for(gemma, cfg, embeddings=True)
    assert with_embeddings.kv_bytes - plain.kv_bytes == 8192 * 18 * 256 * 2 * 2
