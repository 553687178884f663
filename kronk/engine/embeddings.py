"""Embeddings: a context of their own (created on first use), pooled and L2-normalised.

Memory is bounded by the micro-batch, not by the input: llama.cpp keeps per-token buffers (hidden states and,
for a generative model, a row of logits over the whole vocabulary: 1 MiB a token for Gemma's 262k) for every
token of a micro-batch, so the context computes at most ``UBATCH`` tokens at once. A model with causal
attention (a generative model, mean-pooled here, or a causal embedding model such as Qwen3-Embedding) runs a
long input in consecutive micro-batches through its KV cache: each micro-batch yields the pooled vector of
the part of each sequence it holds, and the parts combine exactly (MEAN: the length-weighted mean; CLS: the
first part's; LAST: the last part's). A model without causal attention (BERT-like embedding models: every
token attends to the whole input) needs an input in one micro-batch, so its micro-batch is its whole
embedding context. Either way an input is at most the embedding context (``embedding_ctx``, within the
model's trained context) long; longer ones are refused.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import llama_cpp

from kronk.engine.model import LlamaModel
from kronk.errors import ContextLengthExceeded, EngineError, InvalidRequest

MAX_SEQS = 8
# Tokens computed at once by the embeddings context (llama.cpp's n_ubatch) where inputs may span several.
UBATCH = 512
# Poolings whose value over a sequence follows from its values over consecutive parts (causal attention).
_SPLITTABLE = (llama_cpp.LLAMA_POOLING_TYPE_MEAN, llama_cpp.LLAMA_POOLING_TYPE_CLS,
               llama_cpp.LLAMA_POOLING_TYPE_LAST)



def pooled_context(model: LlamaModel, n_ctx: int, n_ubatch: int, n_seq_max: int, threads: int, pooling: int,
                   what: str) -> object:
    """A llama.cpp context of pooled outputs (embeddings, rank scores): one llama_decode is one micro-batch of
    ``n_ubatch`` tokens, one KV stream (a decode is never split by sequence). ``what``: the error's word."""
    p = llama_cpp.llama_context_default_params()
    p.n_ctx = n_ctx
    p.n_batch = p.n_ubatch = n_ubatch
    p.n_seq_max = n_seq_max
    p.n_threads = p.n_threads_batch = threads
    p.embeddings = True
    p.pooling_type = pooling
    p.kv_unified = True
    p.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model.ptr, p)
    if not ctx:
        raise EngineError(f"llama.cpp could not create the {what} context (out of memory?)")
    return ctx

def pooled_decodes(ctx: object, batch: object, group: list[list[int]], ubatch: int,
                   what: str) -> Iterator[list[tuple[int, int, bool]]]:
    """Decode ``group``'s token lists (each its own sequence, from position 0, on a cleared memory), in
    micro-batches of at most ``ubatch`` tokens; after each decode, yield the parts it held:
    ``(sequence, how many of its tokens, whether its last token was among them)``. ``what``: the error's word
    for the work (embedding, reranking)."""
    b = batch
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    seq_id, pos = 0, 0  # the next token to compute
    while seq_id < len(group):
        parts: list[tuple[int, int, bool]] = []
        n = 0
        while seq_id < len(group) and n < ubatch:
            toks = group[seq_id]
            take = min(ubatch - n, len(toks) - pos)
            for k in range(take):
                b.token[n], b.pos[n], b.n_seq_id[n] = toks[pos + k], pos + k, 1
                b.seq_id[n][0] = seq_id
                b.logits[n] = True  # llama.cpp outputs every token of a pooled batch
                n += 1
            pos += take
            ended = pos == len(toks)
            parts.append((seq_id, take, ended))
            if ended:
                seq_id, pos = seq_id + 1, 0
        b.n_tokens = n
        rc = llama_cpp.llama_decode(ctx, b)
        if rc != 0:
            raise EngineError(f"llama_decode failed while {what} ({rc})")
        yield parts

class EmbeddingRunner:
    """Runs embedding batches; thread-safe (one batch at a time)."""

    def __init__(self, model: LlamaModel, threads: int, n_ctx: int, pooled_model: bool):
        self.model = model
        self.threads = threads
        self.n_ctx = min(n_ctx, model.n_ctx_train) if model.n_ctx_train > 0 else n_ctx
        # Embedding models pool as their GGUF says; generative models are mean-pooled.
        self.pooling = llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED if pooled_model else llama_cpp.LLAMA_POOLING_TYPE_MEAN
        self._lock = threading.Lock()
        self.ctx = None
        self.batch = None
        self.n_ubatch = 0  # known once the context exists
        self.split = False  # whether an input may span micro-batches (causal attention, a splittable pooling)
        self.mode = self.pooling  # the pooling the context applies (the GGUF's, for an embedding model)

    def _make_ctx(self, n_ubatch: int):
        return pooled_context(self.model, self.n_ctx, n_ubatch, MAX_SEQS, self.threads, self.pooling, "embeddings")

    def _ensure_ctx(self) -> None:
        if self.ctx is not None:
            return
        n_ubatch = min(UBATCH, self.n_ctx)
        ctx = self._make_ctx(n_ubatch)
        split = (bool(llama_cpp.llama_get_causal_attn(ctx))
                 and llama_cpp.llama_pooling_type(ctx) in _SPLITTABLE)
        if not split and n_ubatch < self.n_ctx:  # an input must fit one micro-batch: make it the whole context
            llama_cpp.llama_free(ctx)
            n_ubatch = self.n_ctx
            ctx = self._make_ctx(n_ubatch)
        self.ctx, self.n_ubatch, self.split = ctx, n_ubatch, split
        self.mode = llama_cpp.llama_pooling_type(ctx)
        self.batch = llama_cpp.llama_batch_init(n_ubatch, 0, 1)

    def embed(self, inputs: list[str] | list[list[int]], normalize: bool = True,
              max_tokens: int | None = None) -> tuple[list[list[float]], int]:
        """Pooled vectors of ``inputs``, and their token count; at most ``max_tokens`` tokens in all (the server's
        max_embedding_tokens), counted as they are tokenized so that an oversized request stops early."""
        seqs: list[list[int]] = []
        total = 0
        for i, item in enumerate(inputs):
            toks = self.model.tokenize(item) if isinstance(item, str) else list(item)
            if not toks:
                raise InvalidRequest(f"input[{i}] is empty", param="input")
            if len(toks) > self.n_ctx:
                raise ContextLengthExceeded(len(toks), self.n_ctx, param="input")
            if any(not 0 <= t < self.model.n_vocab for t in toks):
                raise InvalidRequest(f"input[{i}] has a token id outside the vocabulary", param="input")
            total += len(toks)
            if max_tokens is not None and total > max_tokens:
                raise InvalidRequest(f"the inputs hold more than {max_tokens} tokens (at input[{i}]); at most "
                                     f"{max_tokens} are allowed in one request (the server's max_embedding_tokens)",
                                     param="input")
            seqs.append(toks)
        out: list[list[float]] = []
        with self._lock:
            self._ensure_ctx()
            # a group shares the KV cache (at most n_ctx cells) and, unless inputs may be split, one micro-batch
            room = self.n_ctx if self.split else self.n_ubatch
            i = 0
            while i < len(seqs):
                group, n = [], 0
                while i < len(seqs) and len(group) < MAX_SEQS and n + len(seqs[i]) <= room:
                    group.append(seqs[i])
                    n += len(seqs[i])
                    i += 1
                out.extend(self._run(group, normalize))
        return out, sum(len(s) for s in seqs)

    def _run(self, group: list[list[int]], normalize: bool) -> list[list[float]]:
        """The group's tokens, sequence after sequence, in micro-batches of at most n_ubatch tokens; each
        micro-batch's pooled vector of each sequence part it holds is combined into that sequence's."""
        dim = llama_cpp.llama_model_n_embd_out(self.model.ptr) or self.model.n_embd
        acc: list[list[float] | None] = [None] * len(group)
        for parts in pooled_decodes(self.ctx, self.batch, group, self.n_ubatch, "embedding"):
            for s, take, _ in parts:
                ptr = llama_cpp.llama_get_embeddings_seq(self.ctx, s)
                if not ptr:
                    raise EngineError("the model produced no pooled embedding")
                v = ptr[:dim]
                prev = acc[s]
                if self.mode == llama_cpp.LLAMA_POOLING_TYPE_MEAN:  # a length-weighted sum, divided below
                    prev = prev or [0.0] * dim
                    acc[s] = [a + x * take for a, x in zip(prev, v, strict=True)]
                elif prev is None or self.mode != llama_cpp.LLAMA_POOLING_TYPE_CLS:  # CLS: the first part's
                    acc[s] = list(v)
        vectors = []
        for toks, v in zip(group, acc, strict=True):
            assert v is not None
            if self.mode == llama_cpp.LLAMA_POOLING_TYPE_MEAN:
                v = [x / len(toks) for x in v]
            if normalize:
                norm = math.sqrt(sum(x * x for x in v)) or 1.0
                v = [x / norm for x in v]
            vectors.append(v)
        return vectors

    def close(self) -> None:
        with self._lock:  # a running embed finishes first: its context and batch are freed after it
            if self.ctx is not None:
                llama_cpp.llama_batch_free(self.batch)
                llama_cpp.llama_free(self.ctx)
                self.ctx = None
