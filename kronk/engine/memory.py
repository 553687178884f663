"""What an engine will take in memory, from the GGUF header alone (no weights loaded, no llama.cpp).

``read_shape(path)`` reads a GGUF file's metadata and tensor table: the model's shape (layers, heads, head
sizes, sliding-window layers, trained context, vocabulary) and its weights' bytes. ``estimate(shape, ...)``
adds up what ``LlamaEngine`` (kronk/engine/engine.py) makes llama.cpp allocate for one configuration:

- **weights**: every tensor's bytes (llama.cpp maps the file; once a generation has run, all of it is resident);
- **KV cache**: cells x bytes per cell, per layer, where a sliding-window layer holds only its window's cells
  unless ``swa_full`` (llama.cpp's ``llama_kv_cache_iswa``), and a quantized type's bytes come from ggml's
  block sizes;
- **compute**: the buffers one decode step touches (activations of a prefill chunk, logits of the generating
  rows, attention scores without flash attention), calibrated against measured RSS (docs/memory.md);
- **overhead**: what loading a model costs beside its tensors (the vocabulary's tables, the backend).

``estimate_for(path, engine_config)`` does it for an :class:`~kronk.engine.config.EngineConfig`, with the
same context sizing the engine uses. docs/memory.md says how it was measured.
"""

from __future__ import annotations

import dataclasses
import mmap
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from kronk.errors import EngineError
from kronk.settings import pool_tokens

if TYPE_CHECKING:
    from kronk.engine.config import EngineConfig

MiB = 1024 * 1024

# --------------------------------------------------------------------------------------------- GGUF header
_GGUF_MAGIC = b"GGUF"
_SCALAR_FORMATS: dict[int, str] = {  # GGUF value types (gguf.constants.GGUFValueType) -> struct formats
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}
_STRING, _ARRAY = 8, 9
# Arrays longer than this (the vocabulary's tokens, scores, merges) are skipped: only their length is kept.
_MAX_ARRAY_ITEMS = 4096


class GGUFFormatError(EngineError):
    """A file that is not a readable GGUF (or a part of a split GGUF is missing)."""

    code = "invalid_model_file"


@dataclass(frozen=True)
class SkippedArray:
    """A long metadata array, not read: its length (a vocabulary's size) is all the estimate needs."""

    length: int


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int
    n_elements: int
    n_bytes: int


class _Cursor:
    """Reads GGUF's little-endian values from a mapped file, moving forward."""

    def __init__(self, buf: mmap.mmap, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def unpack(self, fmt: str) -> Any:
        try:
            (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        except struct.error as e:
            raise GGUFFormatError(f"{self.path.name}: the GGUF header ends early") from e
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        if self.pos + n > len(self.buf):
            raise GGUFFormatError(f"{self.path.name}: the GGUF header ends early")
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.unpack("<Q")  # (not `self.pos += self.unpack(...)`: that adds to the position before the read)
        self.pos += n

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            return self.array()
        fmt = _SCALAR_FORMATS.get(vtype)
        if fmt is None:
            raise GGUFFormatError(f"{self.path.name}: unknown GGUF value type {vtype}")
        return self.unpack(fmt)

    def array(self) -> list[Any] | SkippedArray:
        itype, n = self.unpack("<I"), self.unpack("<Q")
        if n <= _MAX_ARRAY_ITEMS:
            return [self.value(itype) for _ in range(n)]
        if itype == _STRING:
            for _ in range(n):
                self.skip_string()
        elif itype in _SCALAR_FORMATS:
            self.pos += n * struct.calcsize(_SCALAR_FORMATS[itype])
        else:  # arrays of arrays: walk them
            for _ in range(n):
                self.value(itype)
        return SkippedArray(n)


def _tensor_bytes(ggml_type: int, n_elements: int, path: Path, name: str) -> int:
    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (KeyError, ValueError) as e:
        raise GGUFFormatError(f"{path.name}: tensor {name} has a ggml type ({ggml_type}) this gguf package "
                              "does not know; upgrade the gguf package") from e
    return n_elements // block * size


def read_gguf(path: str | Path) -> tuple[dict[str, Any], list[TensorInfo]]:
    """The metadata and the tensor table of one GGUF file (its header only; no tensor data is read)."""
    p = Path(path)
    try:
        with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != _GGUF_MAGIC:
                raise GGUFFormatError(f"{p.name} is not a GGUF file")
            cur = _Cursor(buf, p)
            cur.pos = 4
            version = cur.unpack("<I")
            if version < 2:
                raise GGUFFormatError(f"{p.name}: GGUF version {version} is too old (2 or later is read)")
            n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
            meta: dict[str, Any] = {}
            for _ in range(n_kv):
                key = cur.string()
                meta[key] = cur.value(cur.unpack("<I"))
            tensors = []
            for _ in range(n_tensors):
                name = cur.string()
                dims = [cur.unpack("<Q") for _ in range(cur.unpack("<I"))]
                ggml_type = cur.unpack("<I")
                cur.unpack("<Q")  # the tensor's offset in the data section
                n = 1
                for d in dims:
                    n *= d
                tensors.append(TensorInfo(name, ggml_type, n, _tensor_bytes(ggml_type, n, p, name)))
    except OSError as e:
        raise GGUFFormatError(f"cannot read {p.name}: {e.strerror or e}") from e
    except ValueError as e:  # an empty file cannot be mapped
        raise GGUFFormatError(f"{p.name} is not a GGUF file ({e})") from e
    return meta, tensors


_SPLIT_NAME = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


def _split_parts(path: Path, meta: Mapping[str, Any]) -> list[Path]:
    """The other files of a split GGUF (``name-00001-of-00003.gguf``), from its first part."""
    count = int(meta.get("split.count") or 1)
    if count <= 1:
        return []
    m = _SPLIT_NAME.search(path.name)
    if m is None:
        raise GGUFFormatError(f"{path.name} is part of a split GGUF ({count} files) but is not named "
                              "<name>-00001-of-000NN.gguf")
    stem = path.name[:m.start()]
    parts = [path.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(2, count + 1)]
    missing = [q.name for q in parts if not q.is_file()]
    if missing:
        raise GGUFFormatError(f"split GGUF {path.name}: missing {', '.join(missing)}")
    return parts


# --------------------------------------------------------------------------------------------- model shape
# The sliding-window layers of architectures whose GGUF gives a window but no pattern: llama.cpp's
# set_swa_pattern(period) makes layer il a sliding-window layer when il % period < period - 1 (so every
# period-th layer is global). Gemma 3: 5 local layers, then a global one.
SWA_PERIODS: dict[str, int] = {"gemma2": 2, "gemma3": 6, "cohere2": 4, "gpt-oss": 2}


def _per_layer(value: Any, n_layer: int, default: int) -> tuple[int, ...]:
    """A hyperparameter that GGUF stores as one number or as one per layer."""
    if value is None:
        return (default,) * n_layer
    if isinstance(value, list):
        if len(value) != n_layer:
            raise GGUFFormatError(f"a per-layer value has {len(value)} entries for {n_layer} layers")
        return tuple(int(v) for v in value)
    return (int(value),) * n_layer


def _swa_layers(arch: str, meta: Mapping[str, Any], n_layer: int, n_swa: int) -> tuple[bool, ...]:
    """Which layers use the sliding window, as llama.cpp decides (load_swa_pattern): the GGUF's per-layer
    ``sliding_window_pattern`` array, else its period, else the architecture's known period; an unknown
    architecture's layers count as global (the larger, safe estimate)."""
    if n_swa <= 0:
        return (False,) * n_layer
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list):
        if len(pattern) != n_layer:
            raise GGUFFormatError(f"sliding_window_pattern has {len(pattern)} entries for {n_layer} layers")
        return tuple(bool(v) for v in pattern)
    period = int(pattern) if pattern is not None else SWA_PERIODS.get(arch)
    if period is None:
        return (False,) * n_layer
    return tuple(period == 0 or il % period < period - 1 for il in range(n_layer))


def _vocab_size(arch: str, meta: Mapping[str, Any]) -> int:
    n = meta.get(f"{arch}.vocab_size")
    if n is not None:
        return int(n)
    tokens = meta.get("tokenizer.ggml.tokens")
    if isinstance(tokens, SkippedArray):
        return tokens.length
    return len(tokens) if isinstance(tokens, list) else 0


@dataclass(frozen=True)
class ModelShape:
    """A model's shape as the memory estimate needs it, read from its GGUF header (``read_shape``)."""

    path: str
    architecture: str
    n_layer: int
    n_embd: int
    n_ff: int  # the widest layer's feed-forward size
    n_head: tuple[int, ...]  # per layer
    n_head_kv: tuple[int, ...]  # per layer (0: a layer without KV cache)
    head_dim_k: int
    head_dim_v: int
    head_dim_k_swa: int  # sliding-window layers' head sizes (the same as the others' unless the GGUF says)
    head_dim_v_swa: int
    n_swa: int  # the sliding window (0: none)
    swa_layers: tuple[bool, ...]  # per layer: uses the sliding window
    n_ctx_train: int
    n_vocab: int
    weights_bytes: int  # all tensors, every part of a split GGUF
    # the layers' tensors llama.cpp's CPU backend repacks into a copy of its own (batch_invariant off)
    repack_bytes: int = 0
    pooling: bool = False  # the GGUF sets a pooling type: an embedding model
    file_bytes: int = 0
    sampling: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)  # general.sampling.*

    @property
    def has_swa(self) -> bool:
        return self.n_swa > 0 and any(self.swa_layers)

    def kv_row_bytes(self, cache_type_k: str, cache_type_v: str, swa: bool) -> float:
        """Bytes one KV cell takes over all layers of one kind (sliding-window or global)."""
        bk, bv = bytes_per_element(cache_type_k), bytes_per_element(cache_type_v)
        dk, dv = (self.head_dim_k_swa, self.head_dim_v_swa) if swa else (self.head_dim_k, self.head_dim_v)
        heads = sum(h for h, s in zip(self.n_head_kv, self.swa_layers, strict=True) if s == swa)
        return heads * (dk * bk + dv * bv)


# GGML types whose layer weights llama.cpp's CPU backend repacks for its faster kernels (Q4_0, Q4_K, IQ4_NL:
# measured on Gemma 3 270M Q4_K_M, where RSS grew by its Q4_K layers' bytes and not by its Q8_0, Q5_0 or Q6_K
# ones). The copy is memory beside the mapped file's pages.
REPACKED_TYPES = frozenset({2, 12, 20})


def read_shape(path: str | Path) -> ModelShape:
    """A GGUF model's shape and weights' size, from its header (and the other parts' headers of a split
    GGUF): nothing is loaded, no llama.cpp is needed. Hyperparameters default as llama.cpp's loader
    defaults them (head sizes: n_embd / n_head; KV heads: the attention heads)."""
    p = Path(path)
    meta, tensors = read_gguf(p)
    parts = _split_parts(p, meta)
    every = [*tensors, *(t for q in parts for t in read_gguf(q)[1])]
    weights = sum(t.n_bytes for t in every)
    repacked = sum(t.n_bytes for t in every if t.name.startswith("blk.") and t.ggml_type in REPACKED_TYPES)
    arch = str(meta.get("general.architecture") or "")
    if not arch:
        raise GGUFFormatError(f"{p.name} has no general.architecture")

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    n_layer = int(get("block_count", 0))
    n_embd = int(get("embedding_length", 0))
    n_head = _per_layer(get("attention.head_count"), n_layer, 0)
    n_head_kv = _per_layer(get("attention.head_count_kv"), n_layer, n_head[0] if n_head else 0)
    head0 = n_head[0] if n_head and n_head[0] else 1
    dk = int(get("attention.key_length", n_embd // head0))
    dv = int(get("attention.value_length", n_embd // head0))
    n_swa = int(get("attention.sliding_window", 0) or 0)
    ff = get("feed_forward_length", 0)
    return ModelShape(
        path=str(p), architecture=arch, n_layer=n_layer, n_embd=n_embd,
        n_ff=max(ff) if isinstance(ff, list) and ff else int(ff or 0),
        n_head=n_head, n_head_kv=n_head_kv, head_dim_k=dk, head_dim_v=dv,
        head_dim_k_swa=int(get("attention.key_length_swa", dk)),
        head_dim_v_swa=int(get("attention.value_length_swa", dv)),
        n_swa=n_swa, swa_layers=_swa_layers(arch, meta, n_layer, n_swa),
        n_ctx_train=int(get("context_length", 0) or 0), n_vocab=_vocab_size(arch, meta),
        weights_bytes=weights, repack_bytes=repacked, pooling=get("pooling_type") is not None,
        file_bytes=p.stat().st_size + sum(q.stat().st_size for q in parts),
        sampling={k.removeprefix("general.sampling."): v for k, v in meta.items()
                  if k.startswith("general.sampling.")},
    )


# --------------------------------------------------------------------------------------------- estimate
# KV cache types: ggml's block bytes / block size (q8_0: 34 bytes for 32 values).
KV_TYPE_IDS: dict[str, int] = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "iq4_nl": 20, "bf16": 30,
}


def bytes_per_element(cache_type: str) -> float:
    """Bytes one value takes in a KV cache of this type."""
    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(KV_TYPE_IDS[cache_type])]
    except KeyError as e:
        raise ValueError(f"unknown KV cache type {cache_type!r}; one of {', '.join(KV_TYPE_IDS)}") from e
    return size / block


def flash_runs(flash_attn: str, cache_type_v: str) -> bool:
    """Whether llama.cpp runs flash attention for kronk's ``flash_attn`` setting: ``auto`` turns it on where
    the backend supports it (the CPU does), and a quantized V cache needs it (kronk/engine/kvcache.py)."""
    return flash_attn != "off" or cache_type_v not in ("f32", "f16", "bf16")


def format_bytes(n: float) -> str:
    return f"{n / MiB:.0f} MiB" if abs(n) < 10 * 1024 * MiB else f"{n / (1024 * MiB):.1f} GiB"


def _pad(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def context_cells(n_ctx: int, parallel: int, kv_unified: bool = False) -> tuple[int, int]:
    """(cells per stream, streams) of llama.cpp's KV cache for ``n_ctx`` tokens per slot and ``parallel``
    slots, as llama_context rounds them: the total is padded to 256, then each slot's share is (a stream per
    slot unless the cache is unified)."""
    total = _pad(n_ctx * parallel, 256)
    if kv_unified:
        return total, 1
    return _pad(total // parallel, 256), parallel


def swa_cells(shape: ModelShape, n_ctx_seq: int, n_ubatch: int, parallel: int, kv_unified: bool,
              swa_full: bool) -> int:
    """Cells per stream of the sliding-window layers (llama_kv_cache_iswa): the window plus one micro-batch,
    padded to 256, at most the full cache; the full cache when ``swa_full``."""
    if swa_full or not shape.has_swa:
        return n_ctx_seq
    window = shape.n_swa * (parallel if kv_unified else 1) + n_ubatch
    return _pad(min(n_ctx_seq, window), 256)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one engine takes: weights, KV cache, compute buffers and the rest of loading a model."""

    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    overhead_bytes: int
    kv_cells: int = 0  # KV cells of the global layers, all slots
    kv_cells_swa: int = 0  # of the sliding-window layers (the same as kv_cells when swa_full)
    # the RAM prefix cache's budget (kronk/engine/prefix_cache.py): it fills as slots give prompts up
    prefix_cache_bytes: int = 0
    total_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        total = (self.weights_bytes + self.kv_bytes + self.compute_bytes + self.overhead_bytes
                 + self.prefix_cache_bytes)
        object.__setattr__(self, "total_bytes", total)

    def describe(self) -> str:
        cache = f" + prefix cache {format_bytes(self.prefix_cache_bytes)}" if self.prefix_cache_bytes else ""
        return (f"{format_bytes(self.total_bytes)} = weights {format_bytes(self.weights_bytes)} + KV "
                f"{format_bytes(self.kv_bytes)} + compute {format_bytes(self.compute_bytes)} + other "
                f"{format_bytes(self.overhead_bytes)}{cache}")

    def as_dict(self) -> dict[str, int]:
        return {"weights_bytes": self.weights_bytes, "kv_bytes": self.kv_bytes,
                "compute_bytes": self.compute_bytes, "overhead_bytes": self.overhead_bytes,
                "prefix_cache_bytes": self.prefix_cache_bytes,
                "total_bytes": self.total_bytes, "kv_cells": self.kv_cells, "kv_cells_swa": self.kv_cells_swa}


# Compute buffers and the rest, calibrated against llama.cpp's own buffer sizes and the measured RSS growth of
# an engine on the two test models (docs/memory.md has the table). Activations: the f32 rows live at the peak
# of one layer's graph, per token of the largest step.
ACT_ROWS_EMBD = 8  # rows of n_embd (residual, norms, attention in/out, Q/K/V)
ACT_ROWS_FF = 3  # rows of n_ff (gate, up, their product)
OVERHEAD_BASE = 14 * MiB  # the CPU backend's threads and work buffer, graph metadata, the file's header pages
OVERHEAD_PER_TOKEN = 155  # per vocabulary entry: llama.cpp's tables (texts, scores, maps), the samplers' arrays


def compute_bytes(shape: ModelShape, n_ctx_seq: int, n_tokens: int, n_outputs: int, flash_attn: bool,
                  reserved: bool = False) -> int:
    """The compute buffers of a step of ``n_tokens`` tokens (``n_outputs`` of them with logits) over a full
    stream of ``n_ctx_seq`` cells: the activations, the attention scores (none with flash attention: it
    streams over the cache), and the logits (in the graph and in the output buffer).

    ``reserved``: what llama.cpp reserves instead, for a micro-batch of ``n_tokens`` with a row of logits per
    token (its buffer peaks at the output: the logits and two rows of n_embd per token, which is exactly the
    ``compute buffer size`` it logs for both test models) or the activations if larger; on a GPU it is all
    committed at once."""
    n_head = max(shape.n_head, default=0)
    act = n_tokens * 4 * (ACT_ROWS_EMBD * shape.n_embd + ACT_ROWS_FF * shape.n_ff)
    scores = 0 if flash_attn else 2 * n_tokens * n_ctx_seq * n_head * 4
    out = n_outputs * shape.n_vocab * 4  # the output buffer (a row of logits per slot)
    if reserved:
        return max(act, n_tokens * 4 * (shape.n_vocab + 2 * shape.n_embd)) + scores + out
    return act + scores + 2 * out


def overhead_bytes(shape: ModelShape) -> int:
    """What loading a model costs beside its tensors and a context's buffers."""
    return OVERHEAD_BASE + OVERHEAD_PER_TOKEN * shape.n_vocab


def estimate(shape: ModelShape, n_ctx: int, parallel: int = 1, cache_type_k: str = "f16",
             cache_type_v: str = "f16", n_batch: int = 512, n_ubatch: int = 512, *, swa_full: bool = False,
             flash_attn: bool = True, kv_unified: bool = False, prefill_chunk: int | None = None,
             gpu: bool = False, pool_cells: int | None = None) -> MemoryEstimate:
    """The memory of one llama.cpp context as kronk's engine makes it, with the model's weights.

    ``n_ctx`` is the context of one slot (EngineConfig.ctx_size, after the engine caps it at the trained
    context: :func:`estimate_for` does), ``parallel`` the slots (llama.cpp's n_seq_max, a KV stream each
    unless ``kv_unified``). ``flash_attn`` is whether it runs (see :func:`flash_runs`).

    The compute buffers are what a step touches: kronk's steps are prompt chunks of at most
    ``prefill_chunk`` tokens without logits, or one token of each generating slot with logits, so on the CPU
    (where llama.cpp's buffer is reserved for a whole micro-batch but only the pages a step uses become
    resident) that is what counts. With ``gpu`` the whole reservation counts (device memory is committed at
    allocation): a micro-batch of ``n_ubatch`` tokens.

    ``pool_cells`` (with ``kv_unified``): the cells of the one pool the slots share (EngineConfig.pool_cells),
    instead of ``n_ctx`` x ``parallel``."""
    n_ubatch = min(n_ubatch, n_batch)
    seq, streams = ((_pad(pool_cells, 256), 1) if kv_unified and pool_cells
                    else context_cells(n_ctx, parallel, kv_unified))
    seq_swa = swa_cells(shape, seq, n_ubatch, parallel, kv_unified, swa_full)
    kv = streams * (seq * shape.kv_row_bytes(cache_type_k, cache_type_v, swa=False)
                    + seq_swa * shape.kv_row_bytes(cache_type_k, cache_type_v, swa=True))
    step = n_ubatch if gpu else min(n_ubatch, max(prefill_chunk or n_ubatch, parallel))
    compute = compute_bytes(shape, seq, min(step, seq * streams), parallel, flash_attn, reserved=gpu)
    return MemoryEstimate(weights_bytes=shape.weights_bytes, kv_bytes=int(kv), compute_bytes=compute,
                          overhead_bytes=overhead_bytes(shape), kv_cells=seq * streams,
                          kv_cells_swa=seq_swa * streams if shape.has_swa else 0)


def estimate_for(model: str | Path | ModelShape, cfg: EngineConfig, *, embeddings: bool | None = None,
                 gpu: bool = False) -> MemoryEstimate:
    """The estimate for what ``LlamaEngine(cfg)`` allocates: the context per slot capped at the trained
    context, ``parallel`` streams (or one shared pool of ``cfg.pool_cells`` with ``cfg.unified``), cfg's batch
    sizes, KV types, swa_full and flash attention as the engine resolves them. The embeddings context (created
    on the first /v1/embeddings call) counts when ``embeddings`` is true, or when None for an embedding model
    (its only context). So does the RAM prefix cache's budget (``prefix_cache_bytes``; unset: the size of the
    slots' KV cache), all of which it may fill."""
    shape = model if isinstance(model, ModelShape) else read_shape(model)
    pooled = cfg.embedding if cfg.embedding is not None else shape.pooling
    ctx = min(cfg.ctx_size, shape.n_ctx_train) if shape.n_ctx_train > 0 else cfg.ctx_size
    flash = flash_runs(cfg.flash_attn, cfg.cache_type_v)
    if pooled:
        est = MemoryEstimate(shape.weights_bytes, 0, 0, overhead_bytes(shape))
    else:
        est = estimate(shape, ctx, cfg.parallel, cfg.cache_type_k, cfg.cache_type_v, cfg.batch_size,
                       cfg.n_ubatch, swa_full=cfg.swa_full, flash_attn=flash, prefill_chunk=cfg.prefill_chunk,
                       gpu=gpu, kv_unified=cfg.unified,
                       pool_cells=pool_tokens(ctx, cfg.kv_pool_tokens) if cfg.unified else None)
        cache = cfg.prefix_cache_bytes if cfg.prefix_cache_bytes is not None else est.kv_bytes
        # with batch_invariant off the CPU backend keeps a repacked copy of some layers' weights beside the map
        weights = est.weights_bytes + (shape.repack_bytes if not cfg.batch_invariant and not gpu else 0)
        est = dataclasses.replace(est, prefix_cache_bytes=cache, weights_bytes=weights)
    if embeddings or (embeddings is None and pooled):
        est = _plus_embeddings(shape, est, cfg.embedding_ctx, gpu)
    return est


# The embeddings context's micro-batch (kronk/engine/embeddings.py: UBATCH; a test checks they agree).
EMBEDDING_UBATCH = 512


def _plus_embeddings(shape: ModelShape, est: MemoryEstimate, embedding_ctx: int, gpu: bool) -> MemoryEstimate:
    """Add the embeddings context (kronk/engine/embeddings.py): one unified f16 stream of ``embedding_ctx``
    cells (within the trained context), micro-batches of 512 tokens, a pooled row per sequence."""
    ctx = min(embedding_ctx, shape.n_ctx_train) if shape.n_ctx_train > 0 else embedding_ctx
    e = estimate(shape, ctx, 1, n_batch=EMBEDDING_UBATCH, n_ubatch=min(EMBEDDING_UBATCH, ctx), swa_full=True,
                 kv_unified=True, gpu=gpu)  # one stream of ctx cells (the window of its SWA layers: all of it)
    return MemoryEstimate(est.weights_bytes, est.kv_bytes + e.kv_bytes, est.compute_bytes + e.compute_bytes,
                          est.overhead_bytes, est.kv_cells, est.kv_cells_swa, est.prefix_cache_bytes)
