"""Reranking: llama.cpp's rank pooling (``LLAMA_POOLING_TYPE_RANK``) on a context of its own (created on first use).

A reranker is a GGUF whose ``<arch>.pooling_type`` is RANK: a classification head (``cls.output``, with
``cls`` for BERT-style models) over one token's hidden state. Each (query, document) pair is one sequence,
formatted as llama-server formats it (tools/server ``format_prompt_rerank``): with the GGUF's rerank template
(``tokenizer.chat_template.rerank``: Qwen3-Reranker) ``{query}`` and ``{document}`` are substituted and the text is
tokenized with special tokens parsed; without one, ``[BOS] query [EOS] [SEP] document [EOS]`` with each marker
where the vocabulary asks for it (BGE / XLM-RoBERTa rerankers). The score is the first value of the sequence's
pooled output, as llama-server reports it: a logit for a BERT-style head, the "yes" probability of Qwen3's
softmax over yes/no.

llama.cpp ranks by the first token (BERT-style, bidirectional attention: a pair is computed in one micro-batch,
which is the whole context) or, for Qwen3, by the last (causal attention: a long pair runs in consecutive
micro-batches through the KV cache, and the micro-batch that holds its last token gives its score), so the memory
of a causal reranker is bounded by the micro-batch as in kronk/engine/embeddings.py.

Batch invariance (the engine's ``batch_invariant``, on by default): llama.cpp's CPU kernels compute a sequence's
hidden states slightly differently with other sequences in the same llama_decode (measured on the test reranker:
a "yes" probability moved by up to 0.024 between a pair scored alone and among four), so by default each pair is
its own llama_decode and its score never depends on the other documents of the request. Off, up to ``MAX_SEQS``
pairs share one llama_decode (fewer, larger decodes: faster on a GPU for short pairs).
"""

from __future__ import annotations

import math
import re
import threading

import llama_cpp

from kronk.engine.embeddings import MAX_SEQS, UBATCH, pooled_context, pooled_decodes
from kronk.engine.model import LlamaModel
from kronk.errors import EngineError, InvalidRequest

# Architectures llama.cpp ranks by the last token of a sequence (src/llama-graph.cpp: llm_graph_input_cls).
LAST_TOKEN_ARCHS = ("qwen3", "qwen3vl")
_SLOTS = re.compile(r"\{query\}|\{document\}")


def is_reranker(model: LlamaModel) -> bool:
    """Whether the GGUF pools by rank (a reranker's conversion writes ``<arch>.pooling_type = 4``)."""
    return model.meta(f"{model.architecture}.pooling_type") == str(llama_cpp.LLAMA_POOLING_TYPE_RANK)


def rerank_template(model: LlamaModel) -> str | None:
    ptr = llama_cpp.llama_model_chat_template(model.ptr, b"rerank")
    return ptr.decode("utf-8", errors="replace") if ptr else None


def rerank_prompt(model: LlamaModel, template: str | None, query: str, document: str) -> list[int]:
    """The tokens of one (query, document) pair, as llama-server's ``format_prompt_rerank`` makes them (the
    template's two slots are filled in one pass, so a query holding the text ``{document}`` stays as written)."""
    if template is not None:
        text = _SLOTS.sub(lambda m: query if m.group(0) == "{query}" else document, template)
        return model.tokenize(text, add_special=False, parse_special=True)
    vocab = model.vocab
    eos = model.eos if model.eos >= 0 else llama_cpp.llama_vocab_sep(vocab)
    add_eos = bool(llama_cpp.llama_vocab_get_add_eos(vocab)) and eos >= 0
    sep = llama_cpp.llama_vocab_sep(vocab)
    add_sep = bool(llama_cpp.llama_vocab_get_add_sep(vocab)) and sep >= 0
    out = [model.bos] if model.add_bos and model.bos >= 0 else []
    out += model.tokenize(query, add_special=False, parse_special=False)
    out += [eos] if add_eos else []
    out += [sep] if add_sep else []
    out += model.tokenize(document, add_special=False, parse_special=False)
    out += [eos] if add_eos else []
    return out


class RerankRunner:
    """Scores (query, document) pairs; thread-safe (one request at a time)."""

    def __init__(self, model: LlamaModel, threads: int, n_ctx: int, invariant: bool = True):
        self.model = model
        self.threads = threads
        self.max_seqs = 1 if invariant else MAX_SEQS  # pairs in one llama_decode
        self.n_ctx = min(n_ctx, model.n_ctx_train) if model.n_ctx_train > 0 else n_ctx
        self.template = rerank_template(model)
        self.split = model.architecture in LAST_TOKEN_ARCHS  # a pair may span micro-batches
        self.n_ubatch = min(UBATCH, self.n_ctx) if self.split else self.n_ctx
        self._lock = threading.Lock()
        self.ctx = None
        self.batch = None

    def prompt(self, query: str, document: str) -> list[int]:
        return rerank_prompt(self.model, self.template, query, document)

    def _ensure_ctx(self) -> None:
        if self.ctx is not None:
            return
        ctx = pooled_context(self.model, self.n_ctx, self.n_ubatch, self.max_seqs, self.threads,
                             llama_cpp.LLAMA_POOLING_TYPE_RANK, "rerank")
        self.ctx, self.batch = ctx, llama_cpp.llama_batch_init(self.n_ubatch, 0, 1)

    def rerank(self, query: str, documents: list[str], max_tokens: int | None = None) -> tuple[list[float], int]:
        """The score of each document for ``query``, in document order, and the tokens of all pairs; at most
        ``max_tokens`` tokens in all (the server's max_embedding_tokens), counted as the pairs are tokenized so
        that an oversized request stops early."""
        seqs: list[list[int]] = []
        total = 0
        for i, doc in enumerate(documents):
            toks = self.prompt(query, doc)
            if not toks:
                raise InvalidRequest(f"the query and documents[{i}] make no tokens", param="documents")
            if len(toks) > self.n_ctx:
                raise InvalidRequest(f"the query and documents[{i}] make {len(toks)} tokens; this reranker takes at "
                                     f"most {self.n_ctx} per pair (its embedding_ctx, within its trained context)",
                                     param="documents", code="context_length_exceeded")
            total += len(toks)
            if max_tokens is not None and total > max_tokens:
                raise InvalidRequest(f"the query and documents make more than {max_tokens} tokens (at documents[{i}]; "
                                     f"the query counts once per document); at most {max_tokens} are allowed in one "
                                     "request (the server's max_embedding_tokens)", param="documents")
            seqs.append(toks)
        scores: list[float] = []
        with self._lock:
            self._ensure_ctx()
            # a group shares the KV cache (at most n_ctx cells) and, unless pairs may be split, one micro-batch
            i = 0
            while i < len(seqs):
                group, n = [], 0
                while i < len(seqs) and len(group) < self.max_seqs and n + len(seqs[i]) <= self.n_ctx:
                    group.append(seqs[i])
                    n += len(seqs[i])
                    i += 1
                scores.extend(self._run(group))
        return scores, total

    def _run(self, group: list[list[int]]) -> list[float]:
        """The group's tokens, pair after pair, in micro-batches of at most n_ubatch tokens; a pair's score comes
        from the micro-batch that holds its last token."""
        out: list[float | None] = [None] * len(group)
        for parts in pooled_decodes(self.ctx, self.batch, group, self.n_ubatch, "reranking"):
            for s, _, ended in parts:
                if not ended:
                    continue
                ptr = llama_cpp.llama_get_embeddings_seq(self.ctx, s)
                if not ptr:
                    raise EngineError("the model produced no rank score")
                score = float(ptr[0])
                if not math.isfinite(score):
                    raise EngineError(f"the model produced a score of {score} (a broken rank head?)")
                out[s] = score
        if any(s is None for s in out):
            raise EngineError("a pair got no rank score")
        return out  # type: ignore[return-value]

    def close(self) -> None:
        with self._lock:  # a running rerank finishes first: its context and batch are freed after it
            if self.ctx is not None:
                llama_cpp.llama_batch_free(self.batch)
                llama_cpp.llama_free(self.ctx)
                self.ctx = None
