"""Per-request sampler chains, built from llama.cpp's samplers (no sampling in Python).

A grammar (JSON mode, forced tool calls) is kept out of the chain: the chain picks a
token, the grammar checks just that token, and only when it is refused is the grammar
applied to the whole vocabulary and the token picked again (llama.cpp's own server does
the same). That keeps grammars cheap on large vocabularies, and it lets the engine see
"no token is allowed" (a grammar that is complete while end-of-generation is
suppressed, or a logit_bias that bans every allowed token) instead of llama.cpp
aborting the process when the grammar is fed a token it refuses.
"""

from __future__ import annotations

import ctypes
import math
import random

import llama_cpp
import numpy as np

from kronk.engine.protocol import SamplingParams
from kronk.errors import InvalidRequest

NEG_INF = float("-inf")


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


def token_logprobs(logits: np.ndarray, token: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    """``token``'s log-probability in the softmax of a step's raw ``logits`` (the model's distribution, as
    llama-server's get_token_probabilities computes it), and the ``k`` most likely tokens with theirs, most likely
    first (ties: the lower id first, as the greedy sampler picks). Values too small for a float are -9999.0, as
    OpenAI reports them."""
    top_logit = float(logits.max())
    lse = top_logit + math.log(float(np.exp(logits - top_logit, dtype=np.float32).sum(dtype=np.float64)))
    lp = lambda x: max(float(x) - lse, -9999.0)  # noqa: E731
    if k <= 0:
        return lp(logits[token]), []
    k = min(k, len(logits))
    ids = np.argpartition(logits, len(logits) - k)[len(logits) - k:]
    ids = ids[np.lexsort((ids, -logits[ids]))]
    return lp(logits[token]), [(int(i), lp(logits[i])) for i in ids]


class NoValidToken(Exception):
    """Every token is ruled out (by the grammar together with biases or suppressed tokens)."""


class SamplerChain:
    """Owns a llama_sampler chain; ``free()`` must be called (the engine does) when done."""

    def __init__(self, vocab: llama_cpp.llama_vocab_p, n_vocab: int, params: SamplingParams,
                 suppress_tokens: list[int] | None = None):
        self.ptr = None
        self.grammar = None
        self.n_vocab = n_vocab
        sparams = llama_cpp.llama_sampler_chain_default_params()
        sparams.no_perf = True
        chain = llama_cpp.llama_sampler_chain_init(sparams)
        self.ptr = chain
        add = lambda s: llama_cpp.llama_sampler_chain_add(chain, s)  # noqa: E731

        if params.grammar:
            self.grammar = llama_cpp.llama_sampler_init_grammar(vocab, params.grammar.encode(), b"root")
            if not self.grammar:
                self.free()
                raise InvalidRequest("the grammar (from response_format or tools) could not be parsed",
                                     param="response_format")
            self._cur = np.zeros(n_vocab, dtype=_TOKEN_DATA)
            self._one = np.zeros(1, dtype=_TOKEN_DATA)

        bias = dict(params.logit_bias)
        for t in suppress_tokens or ():
            bias[t] = NEG_INF
        if bias:
            for tok in bias:
                if not 0 <= tok < n_vocab:
                    self.free()
                    raise InvalidRequest(f"logit_bias token id {tok} is outside the vocabulary (0..{n_vocab - 1})",
                                         param="logit_bias")
            arr = (llama_cpp.llama_logit_bias * len(bias))()
            for i, (tok, b) in enumerate(bias.items()):
                arr[i].token = tok
                arr[i].bias = b
            add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(bias), arr))

        if params.repeat_penalty != 1.0 or params.presence_penalty or params.frequency_penalty:
            add(llama_cpp.llama_sampler_init_penalties(
                n_vocab, params.repeat_last_n, params.repeat_penalty,
                params.frequency_penalty, params.presence_penalty))

        if params.greedy:
            add(llama_cpp.llama_sampler_init_greedy())
        else:
            if params.top_k > 0:
                add(llama_cpp.llama_sampler_init_top_k(params.top_k))
            if params.top_p < 1.0:
                add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
            if params.min_p > 0.0:
                add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
            add(llama_cpp.llama_sampler_init_temp(params.temperature))
            seed = params.seed if params.seed is not None else random.getrandbits(32)
            add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, ctx: llama_cpp.llama_context_p, row: int) -> int:
        """Sample from the logits of batch row ``row`` and accept the token (NoValidToken if none is allowed)."""
        if self.grammar is None:
            return llama_cpp.llama_sampler_sample(self.ptr, ctx, row)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row), shape=(self.n_vocab,))
        tok = self._pick(logits, with_grammar=False)
        if tok is None or not self._allowed(tok):
            tok = self._pick(logits, with_grammar=True)
            if tok is None:
                raise NoValidToken()
        llama_cpp.llama_sampler_accept(self.grammar, tok)
        llama_cpp.llama_sampler_accept(self.ptr, tok)
        return tok

    def _array(self, buf: np.ndarray) -> llama_cpp.llama_token_data_array:
        return llama_cpp.llama_token_data_array(
            data=buf.ctypes.data_as(llama_cpp.llama_token_data_p), size=len(buf), selected=-1, sorted=False)

    def _pick(self, logits: np.ndarray, with_grammar: bool) -> int | None:
        cur = self._cur
        cur["id"] = np.arange(self.n_vocab, dtype=np.int32)
        cur["logit"] = logits
        cur["p"] = 0.0
        arr = self._array(cur)
        if with_grammar:
            llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(arr))
            if not np.isfinite(cur["logit"]).any():
                return None
        llama_cpp.llama_sampler_apply(self.ptr, ctypes.byref(arr))
        if not 0 <= arr.selected < arr.size:
            return None
        chosen = arr.data[arr.selected]
        return None if math.isinf(chosen.logit) and chosen.logit < 0 else int(chosen.id)

    def _allowed(self, tok: int) -> bool:
        one = self._one
        one[0] = (tok, 1.0, 0.0)
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(self._array(one)))
        return bool(np.isfinite(one["logit"][0]))

    def logprobs(self, ctx: llama_cpp.llama_context_p, row: int, token: int,
                 k: int) -> tuple[float, list[tuple[int, float]]]:
        """:func:`token_logprobs` of ``token`` over the logits of batch row ``row`` (read before the next decode)."""
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row), shape=(self.n_vocab,))
        return token_logprobs(logits, token, k)

    def accept(self, token: int) -> None:
        if self.grammar is not None:
            llama_cpp.llama_sampler_accept(self.grammar, token)
        llama_cpp.llama_sampler_accept(self.ptr, token)

    def free(self) -> None:
        if self.ptr:
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None
        if self.grammar:
            llama_cpp.llama_sampler_free(self.grammar)
            self.grammar = None

    def __del__(self) -> None:  # safety net; the engine frees explicitly
        self.free()

