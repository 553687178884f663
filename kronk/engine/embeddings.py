"""Embeddings: a context of their own (created on first use), pooled and L2-normalised."""

from __future__ import annotations

import math
import threading

import llama_cpp

from kronk.engine.model import LlamaModel
from kronk.errors import ContextLengthExceeded, EngineError, InvalidRequest

MAX_SEQS = 8


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

    def _ensure_ctx(self) -> None:
        if self.ctx is not None:
            return
        p = llama_cpp.llama_context_default_params()
        p.n_ctx = self.n_ctx
        p.n_batch = p.n_ubatch = self.n_ctx  # non-causal models need a whole input in one ubatch
        p.n_seq_max = MAX_SEQS
        p.n_threads = p.n_threads_batch = self.threads
        p.embeddings = True
        p.pooling_type = self.pooling
        p.kv_unified = True
        p.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model.ptr, p)
        if not self.ctx:
            raise EngineError("llama.cpp could not create the embeddings context (out of memory?)")
        self.batch = llama_cpp.llama_batch_init(self.n_ctx, 0, 1)

    def embed(self, inputs: list[str] | list[list[int]], normalize: bool = True) -> tuple[list[list[float]], int]:
        seqs: list[list[int]] = []
        for i, item in enumerate(inputs):
            toks = self.model.tokenize(item) if isinstance(item, str) else list(item)
            if not toks:
                raise InvalidRequest(f"input[{i}] is empty", param="input")
            if len(toks) > self.n_ctx:
                raise ContextLengthExceeded(len(toks), self.n_ctx, param="input")
            if any(not 0 <= t < self.model.n_vocab for t in toks):
                raise InvalidRequest(f"input[{i}] has a token id outside the vocabulary", param="input")
            seqs.append(toks)
        out: list[list[float]] = []
        with self._lock:
            self._ensure_ctx()
            i = 0
            while i < len(seqs):
                group, n = [], 0
                while i < len(seqs) and len(group) < MAX_SEQS and n + len(seqs[i]) <= self.n_ctx:
                    group.append(seqs[i])
                    n += len(seqs[i])
                    i += 1
                out.extend(self._run(group, normalize))
        return out, sum(len(s) for s in seqs)

    def _run(self, group: list[list[int]], normalize: bool) -> list[list[float]]:
        b = self.batch
        n = 0
        for seq_id, toks in enumerate(group):
            for pos, t in enumerate(toks):
                b.token[n], b.pos[n], b.n_seq_id[n] = t, pos, 1
                b.seq_id[n][0] = seq_id
                b.logits[n] = True
                n += 1
        b.n_tokens = n
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise EngineError(f"llama_decode failed while embedding ({rc})")
        dim = llama_cpp.llama_model_n_embd_out(self.model.ptr) or self.model.n_embd
        vectors = []
        for seq_id in range(len(group)):
            ptr = llama_cpp.llama_get_embeddings_seq(self.ctx, seq_id)
            if not ptr:
                raise EngineError("the model produced no pooled embedding")
            v = [float(ptr[k]) for k in range(dim)]
            if normalize:
                norm = math.sqrt(sum(x * x for x in v)) or 1.0
                v = [x / norm for x in v]
            vectors.append(v)
        return vectors

    def close(self) -> None:
        if self.ctx is not None:
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
