"""Drafters for speculative decoding: guesses of a slot's next tokens that the engine verifies in one decode.

Two drafters, both greedy guesses the target model checks (kronk/engine/engine.py ``_step``):

* :class:`NgramDraft` (prompt lookup, ``speculative: ngram``): the last n tokens of the slot's context
  (prompt + generated so far; n from ``spec_ngram_max`` down to ``spec_ngram_min``) are looked up in that same
  context, and the tokens that followed their latest earlier occurrence are the draft. An index of every n-gram's
  latest end makes a lookup O(n), not a scan; it costs nothing when nothing matches.
* :class:`DraftModel` (``speculative: draft``): a small model of the same vocabulary (``draft_model``) on a
  llama.cpp context of its own, one sequence per slot, that greedily continues the slot's context.

:func:`invariant_rows` measures how many rows of one sequence a ``llama_decode`` may hold while every row's
logits stay bit-identical to the same token decoded alone (llama.cpp's CPU kernels switch paths with the batch
size: on the machine this was written on, at 8 rows for Gemma 3 270M): the engine keeps verify batches within
it, so temperature-0 output is the same with speculation on and off.
"""

from __future__ import annotations

import logging

import llama_cpp
import numpy as np

from kronk.engine.model import LlamaModel
from kronk.errors import EngineError

log = logging.getLogger("kronk.engine")


class NgramDraft:
    """Prompt-lookup drafting over one growing token list (a slot's context; only appended to while it lives)."""

    def __init__(self, n_min: int, n_max: int):
        if not 1 <= n_min <= n_max:
            raise ValueError(f"n-gram sizes must satisfy 1 <= n_min <= n_max (got {n_min}, {n_max})")
        self.n_min, self.n_max = n_min, n_max
        self._last: dict[tuple[int, ...], int] = {}  # n-gram -> the position of its last token, latest occurrence
        self._indexed = 0  # n-grams ending before this position are in _last

    def draft(self, context: list[int], k: int) -> list[int]:
        """Up to ``k`` tokens that followed the latest earlier occurrence of ``context``'s last n tokens (the
        longest n that occurred before, ``n_max`` down to ``n_min``); empty when none did. ``context`` must
        extend the list of the previous call (the engine passes the slot's context, which only grows)."""
        end = len(context) - 1  # the last token's position: an earlier occurrence ends before it
        if k <= 0 or end < 1:
            return []
        last = self._last
        for e in range(self._indexed, end):  # index the n-grams ending at positions not indexed yet
            for n in range(self.n_min, min(self.n_max, e + 1) + 1):
                last[tuple(context[e - n + 1:e + 1])] = e
        self._indexed = max(self._indexed, end)
        for n in range(min(self.n_max, end), self.n_min - 1, -1):
            e = last.get(tuple(context[end - n + 1:]))
            if e is not None:
                return context[e + 1:e + 1 + k]
        return []


# invariant_rows' answers in this process, by (GGUF path, threads, limit, flash attention, KV types): the kernels
# a process runs do not change, so an engine built again on the same model does not measure again
_measured: dict[tuple, int] = {}


def invariant_rows(model: LlamaModel, threads: int, limit: int, flash_attn: int, type_k: int, type_v: int) -> int:
    """The largest n <= ``limit`` such that, for every m <= n, a decode of m consecutive rows of one sequence
    gives each row the same logits, bit for bit, as decoding those tokens one at a time (what the engine does
    without speculation). Measured on a context of its own with the engine's KV types and flash attention, on a
    fixed token sequence (about 2 x limit small decodes); 1 means that no multi-row verify is exact here."""
    if limit <= 1:
        return 1
    key = (str(model.path), threads, limit, flash_attn, type_k, type_v)
    if key not in _measured:
        _measured[key] = _measure_rows(model, threads, limit, flash_attn, type_k, type_v)
    return _measured[key]


def _measure_rows(model: LlamaModel, threads: int, limit: int, flash_attn: int, type_k: int, type_v: int) -> int:
    p = llama_cpp.llama_context_default_params()
    p.n_ctx, p.n_batch, p.n_ubatch, p.n_seq_max = 256, 64, 64, 2
    p.n_threads = p.n_threads_batch = threads
    p.type_k, p.type_v, p.flash_attn_type = type_k, type_v, flash_attn
    p.kv_unified, p.no_perf, p.swa_full, p.embeddings = False, True, True, False
    ctx = llama_cpp.llama_init_from_model(model.ptr, p)
    if not ctx:
        return 1
    batch = llama_cpp.llama_batch_init(64, 0, 1)
    mem = llama_cpp.llama_get_memory(ctx)
    try:
        text = "def area(w, h):\n    return w * h\n\nThe quick brown fox jumps over the lazy dog. " * 4
        toks = model.tokenize(text)
        head, n_vocab = 16, model.n_vocab
        limit = min(limit, 32, len(toks) - head)

        def decode(rows: list[tuple[int, int, int, bool]]) -> None:
            for i, (t, pos, seq, logits) in enumerate(rows):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, pos, 1
                batch.seq_id[i][0], batch.logits[i] = seq, logits
            batch.n_tokens = len(rows)
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise EngineError("llama_decode failed while measuring the invariant verify size")

        def logits(row: int) -> np.ndarray:
            return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row), shape=(n_vocab,)).copy()

        decode([(toks[i], i, 0, False) for i in range(head)])
        decode([(toks[i], i, 1, False) for i in range(head)])  # the same head chunk, on the sequence tried
        ref = []
        for j in range(limit):  # the reference: one row per decode, as without speculation
            decode([(toks[head + j], head + j, 0, True)])
            ref.append(logits(0))
        best = 1
        for n in range(2, limit + 1):
            llama_cpp.llama_memory_seq_rm(mem, 1, head, -1)  # back to the head alone
            decode([(toks[head + j], head + j, 1, True) for j in range(n)])
            if not all(np.array_equal(logits(j), ref[j]) for j in range(n)):
                break
            best = n
        return best
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)


class _PoolFull(Exception):
    """The draft model's shared KV pool has no free cells for a decode."""


class DraftModel:
    """A small model of the target's vocabulary that drafts greedily, one llama.cpp sequence per slot.

    Its context keeps, per slot, the tokens it has evaluated (``cache``): a call evaluates only what the slot's
    context added since (and drops what the target rejected), then drafts ``k`` tokens one decode at a time,
    all slots' rows in one decode."""

    def __init__(self, path: str, target: LlamaModel, n_slots: int, n_ctx_slot: int, threads: int,
                 gpu_layers: int = 0, llama_log: bool = False, pool_cells: int = 0):
        self.model = LlamaModel(path, gpu_layers=gpu_layers, llama_log=llama_log)
        self.ctx = None
        try:
            self._check_vocab(target)
            p = llama_cpp.llama_context_default_params()
            p.n_ctx = pool_cells or n_ctx_slot * n_slots  # pool_cells: one pool shared by the slots, as the target's
            p.n_batch = p.n_ubatch = 512
            p.n_seq_max = n_slots
            p.n_threads = p.n_threads_batch = threads
            p.kv_unified, p.no_perf, p.swa_full, p.embeddings = bool(pool_cells), True, True, False
            self.ctx = llama_cpp.llama_init_from_model(self.model.ptr, p)
            if not self.ctx:
                raise EngineError(f"llama.cpp could not create a context for the draft model {path}")
        except Exception:
            self.model.close()
            raise
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.n_batch = llama_cpp.llama_n_batch(self.ctx)
        self.n_ctx_slot = min(n_ctx_slot, llama_cpp.llama_n_ctx_seq(self.ctx))
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.cache: list[list[int]] = [[] for _ in range(n_slots)]

    def _check_vocab(self, target: LlamaModel) -> None:
        d = self.model
        same = d.n_vocab == target.n_vocab and d.bos == target.bos and d.eos == target.eos
        if same:  # spot-check the tokens' texts across the vocabulary
            step = max(1, d.n_vocab // 512)
            same = all(d.token_text(t) == target.token_text(t) for t in range(0, d.n_vocab, step))
        if not same:
            raise EngineError(f"the draft model {d.path.name} does not share the vocabulary of {target.path.name} "
                              f"({d.n_vocab} vs {target.n_vocab} tokens): speculation needs the same tokenizer")

    def _decode(self, rows: list[tuple[int, int, int, bool]]) -> None:
        b = self.batch
        for i, (t, pos, seq, logits) in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i] = t, pos, 1
            b.seq_id[i][0], b.logits[i] = seq, logits
        b.n_tokens = len(rows)
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc == 1:
            raise _PoolFull
        if rc != 0:
            raise EngineError("the draft model's llama_decode failed")

    def _argmax(self, row: int) -> int:
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, row),
                                                   shape=(self.model.n_vocab,))))

    def draft(self, wants: list[tuple[int, list[int], int]]) -> dict[int, list[int]]:
        """``wants``: (slot id, the slot's context ending with its pending token, k). Returns each slot's
        draft (at most k tokens). A shared pool that runs out of cells is emptied (every slot's draft context
        is evaluated again when next needed) and this step gets no draft."""
        try:
            return self._draft(wants)
        except _PoolFull:
            for slot in range(len(self.cache)):
                self.forget(slot)
            return {}

    def _draft(self, wants: list[tuple[int, list[int], int]]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        live: list[tuple[int, int]] = []  # (slot, k) still drafting
        for slot, context, k in wants:
            k = min(k, self.n_ctx_slot - 1 - len(context))
            if k <= 0:
                continue
            cache = self.cache[slot]
            keep = 0
            n = min(len(cache), len(context) - 1)  # the pending token is always decoded below, with logits
            while keep < n and cache[keep] == context[keep]:
                keep += 1
            if keep < len(cache):
                llama_cpp.llama_memory_seq_rm(self.mem, slot, keep, -1)
                del cache[keep:]
            todo = context[keep:]
            for i in range(0, len(todo), self.n_batch):  # the draft's own prefill, in batches
                part = todo[i:i + self.n_batch]
                self._decode([(t, keep + i + j, slot, i + j == len(todo) - 1) for j, t in enumerate(part)])
                cache.extend(part)
            out[slot] = [self._argmax(len(todo) - 1 - (len(todo) - 1) // self.n_batch * self.n_batch)]
            if k > 1:
                live.append((slot, k))
        for step in range(1, max((k for _, k in live), default=0)):
            live = [(s, k) for s, k in live if k > step]
            if not live:
                break
            rows = []
            for s, _ in live:  # evaluate each slot's last drafted token, all slots in one decode
                rows.append((out[s][-1], len(self.cache[s]), s, True))
                self.cache[s].append(out[s][-1])
            self._decode(rows)
            for i, (s, _) in enumerate(live):
                out[s].append(self._argmax(i))
        return out

    def forget(self, slot: int) -> None:
        """Nothing is known about the slot's sequence any more (the target cleared it)."""
        llama_cpp.llama_memory_seq_rm(self.mem, slot, 0, -1)
        self.cache[slot].clear()

    def close(self) -> None:
        if self.ctx is not None:
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        self.model.close()
