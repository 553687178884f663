"""Per-request sampler chains, built from llama.cpp's samplers (no sampling in Python)."""

from __future__ import annotations

import random

import llama_cpp

from kronk.engine.protocol import SamplingParams
from kronk.errors import InvalidRequest

NEG_INF = float("-inf")


class SamplerChain:
    """Owns a llama_sampler chain; ``free()`` must be called (the engine does) when done."""

    def __init__(self, vocab: llama_cpp.llama_vocab_p, n_vocab: int, params: SamplingParams,
                 suppress_tokens: list[int] | None = None):
        self.ptr = None
        sparams = llama_cpp.llama_sampler_chain_default_params()
        sparams.no_perf = True
        chain = llama_cpp.llama_sampler_chain_init(sparams)
        self.ptr = chain
        add = lambda s: llama_cpp.llama_sampler_chain_add(chain, s)  # noqa: E731

        if params.grammar:
            grammar = llama_cpp.llama_sampler_init_grammar(vocab, params.grammar.encode(), b"root")
            if not grammar:
                self.free()
                raise InvalidRequest("the grammar (from response_format or tools) could not be parsed",
                                     param="response_format")
            add(grammar)

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
        """Sample from the logits of batch row ``row`` and accept the token."""
        return llama_cpp.llama_sampler_sample(self.ptr, ctx, row)

    def accept(self, token: int) -> None:
        llama_cpp.llama_sampler_accept(self.ptr, token)

    def free(self) -> None:
        if self.ptr:
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None

    def __del__(self) -> None:  # safety net; the engine frees explicitly
        self.free()

