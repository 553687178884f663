"""The engine's contract: what goes in, what comes out.

``Engine.generate(request)`` is an async iterator of :class:`GenerationChunk`:

* while streaming, each chunk carries the text produced since the previous chunk
  (``text``, possibly empty) and the new token ids (``token_ids``); text is never
  split inside a UTF-8 character and never contains (part of) a stop string;
* the last chunk has ``finish_reason`` set (``"stop"``: end-of-generation token or a
  stop string; ``"length"``: ``max_tokens`` reached, the slot's context is full, or
  the repetition guard ended a loop (``GenerationRequest.repetition_guard``);
  ``"cancelled"`` is never yielded: a consumer that stops iterating cancels),
  ``usage`` filled in, and ``stop_match`` naming the stop string that ended it (None
  for any other end);
* errors in the request (a prompt longer than the context, a token outside the
  vocabulary, a bad grammar) are raised as :class:`kronk.errors.KronkError`
  subclasses before the first chunk;
  an engine failure mid-stream is raised from the iterator.

Chunks are small dataclasses so they pickle cheaply across a Ray handle.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SamplingParams:
    """Sampling knobs; all sampling runs in llama.cpp's sampler chain."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: str | None = None  # GBNF source, root rule "root"

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class GenerationRequest:
    """One generation over a prompt of token ids (rendered and tokenized once, by the caller)."""

    prompt: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = None  # None: until the slot's context is full
    min_tokens: int = 0
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    request_id: str = ""
    # End a generation that degenerates into a loop (kronk/engine/repetition.py) with finish_reason
    # "length". None: on when sampling.grammar is set (JSON mode, schemas, forced tool calls).
    repetition_guard: bool | None = None
    # None: no log-probabilities (nothing is computed); k (0..20): each generated token's log-probability and the
    # k most likely tokens of its step, on GenerationChunk.logprobs (TokenLogprob)
    logprobs: int | None = None

    @property
    def guarded(self) -> bool:
        return self.sampling.grammar is not None if self.repetition_guard is None else self.repetition_guard


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the slot's KV cache

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Timings:
    queue_s: float = 0.0  # waiting for a slot
    prefill_s: float = 0.0  # slot assigned -> first token
    ttft_s: float = 0.0  # submitted -> first token
    decode_s: float = 0.0  # first token -> last token
    context_tokens: int = 0  # tokens in the slot's context at the end


@dataclass
class TokenLogprob:
    """A generated token and its log-probability under the model's distribution: the softmax of the raw logits
    of its step, before logit_bias, penalties, temperature, top-k/p/min-p and grammar (as OpenAI's and
    llama-server's default). ``top``: the step's most likely tokens, most likely first, as (token id, bytes,
    log-probability)."""

    token_id: int
    piece: bytes  # the token's bytes (a token may hold part of a UTF-8 character)
    logprob: float
    top: list[tuple[int, bytes, float]] = field(default_factory=list)


@dataclass
class GenerationChunk:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    timings: Timings | None = None
    logprobs: list[TokenLogprob] | None = None  # one per token_ids entry when GenerationRequest.logprobs is set
    stop_match: str | None = None  # on a "stop" finish by a stop string: which one (GenerationRequest.stop)


@dataclass
class EngineStats:
    model: str
    n_slots: int
    n_ctx_slot: int
    active: int
    waiting: int
    kv_cells_used: int
    kv_cells_total: int
    kv_bytes: int
    prompt_tokens: int
    prompt_tokens_reused: int
    completion_tokens: int
    requests: int
    slots: list[dict[str, Any]]
    # speculative decoding: the mode in force ("off" where it is off or impossible), the most rows a step's
    # generation decode holds, draft tokens verified and accepted (counters since the engine started)
    speculative: str = "off"
    spec_verify_rows: int = 1
    spec_draft_tokens: int = 0
    spec_accepted_tokens: int = 0
    # prompt tokens copied from another slot's KV instead of computed (a part of prompt_tokens_reused)
    prompt_tokens_shared: int = 0
    # each prefix cache tier's numbers (slot; ram and disk when on): hits, misses, tokens, evictions, writes,
    # bytes, entries (and budget_bytes for ram and disk); see kronk/engine/prefix_cache.py
    prefix_cache: dict[str, dict[str, int]] = field(default_factory=dict)
    # the slots share one KV pool (kv_unified): kv_cells_total is the pool; swapped: requests swapped out to
    # host memory for want of cells, waiting to come back (counted in waiting too); preemptions: how many times
    kv_unified: bool = False
    swapped: int = 0
    preemptions: int = 0


class Engine(abc.ABC):
    """One model, one context, N sequence slots, one decode loop."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream a generation (see the module docstring for the contract)."""

    @abc.abstractmethod
    async def embed(self, inputs: list[str] | list[list[int]], normalize: bool = True,
                    max_tokens: int | None = None) -> tuple[list[list[float]], int]:
        """Pooled (and by default L2-normalised) embeddings, in input order, and the tokens used."""

    @abc.abstractmethod
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of text."""

    @abc.abstractmethod
    def apply_chat_template(self, messages: list[dict[str, Any]], tools: list[dict] | None = None,
                            add_generation_prompt: bool = True, **kwargs: Any) -> str:
        """The prompt text for a chat."""

    @abc.abstractmethod
    def stats(self) -> EngineStats:
        """Counters and slot states."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the decode loop and free llama.cpp resources."""
