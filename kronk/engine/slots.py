"""Sequence slots and the per-request state the decode loop keeps."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import Enum

from kronk.engine.prefix_cache import Snapshot
from kronk.engine.protocol import GenerationChunk, GenerationRequest, Timings, TokenLogprob, Usage
from kronk.engine.repetition import RepetitionGuard
from kronk.engine.sampling import SamplerChain
from kronk.engine.text import StopMatcher, Utf8Decoder


class SlotState(Enum):
    IDLE = "idle"
    PREFILL = "prefill"  # prompt tokens still to evaluate (all but the last)
    GENERATING = "generating"  # one pending token to evaluate with logits, then sample


@dataclass
class Swapped:
    """A running request swapped out of a shared KV pool (kv_unified) for want of cells: its sequence's state
    bytes and the slot fields that go with them, put back into a slot when there is room."""

    snapshot: Snapshot
    pending: list[int]
    next_token: int
    state: SlotState
    floor: int


@dataclass
class Job:
    """A request inside the engine: its queue back to the caller and its running state."""

    request: GenerationRequest
    prompt: list[int]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    # set when a slot runs it
    chain: SamplerChain | None = None
    min_chain: SamplerChain | None = None  # used while fewer than min_tokens were generated
    decoder: Utf8Decoder = field(default_factory=Utf8Decoder)
    stopper: StopMatcher | None = None
    n_gen: int = 0
    n_reused: int = 0
    started: float = 0.0
    first_token: float = 0.0
    out_text: list[str] = field(default_factory=list)
    out_tokens: list[int] = field(default_factory=list)
    out_logprobs: list[TokenLogprob] = field(default_factory=list)  # one per out_tokens when request.logprobs
    # the disk prefix cache's snapshot for this prompt and the tokens it holds of it, read before submission
    # (kronk/engine/engine.py, _from_disk); disk_looked: the disk tier was looked in
    restore: tuple[Snapshot, int] | None = None
    disk_looked: bool = False
    from_tier: tuple[str, int] | None = None  # the tier ("ram", "disk") that restored how many of its tokens
    swapped: Swapped | None = None  # set while the request is swapped out of a shared KV pool
    # fed each sampled token when the request is guarded (GenerationRequest.guarded)
    guard: RepetitionGuard | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.request.guarded:
            self.guard = RepetitionGuard()

    def push(self, chunk: GenerationChunk | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, chunk)

    def flush(self, finish_reason: str | None = None, context_tokens: int = 0) -> None:
        """Send what accumulated since the last flush (one item per step, not per token)."""
        if not (self.out_text or self.out_tokens or finish_reason):
            return
        chunk = GenerationChunk(text="".join(self.out_text), token_ids=self.out_tokens, finish_reason=finish_reason)
        if self.request.logprobs is not None:
            chunk.logprobs, self.out_logprobs = self.out_logprobs, []
        if finish_reason:
            now = time.perf_counter()
            chunk.usage = Usage(prompt_tokens=len(self.prompt), completion_tokens=self.n_gen,
                                cached_tokens=self.n_reused)
            first = self.first_token or now
            chunk.timings = Timings(
                queue_s=self.started - self.submitted if self.started else now - self.submitted,
                prefill_s=first - self.started if self.started else 0.0,
                ttft_s=first - self.submitted, decode_s=now - first, context_tokens=context_tokens,
            )
            if finish_reason == "stop" and self.stopper is not None:
                chunk.stop_match = self.stopper.matched
        self.out_text, self.out_tokens = [], []
        self.push(chunk)

    def free_samplers(self) -> None:
        for c in (self.chain, self.min_chain):
            if c is not None:
                c.free()
        self.chain = self.min_chain = None


@dataclass
class Slot:
    id: int
    state: SlotState = SlotState.IDLE
    cache: list[int] = field(default_factory=list)  # tokens whose KV sits in this sequence
    job: Job | None = None
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet evaluated
    next_token: int = -1  # the token to evaluate next in GENERATING
    row: int = -1  # batch row holding this slot's logits in the current step
    last_used: float = 0.0
    # The leading cache tokens whose KV is exactly what a fresh prefill of any prompt that extends them computes:
    # they were evaluated in whole chunks of the prefill grid from position 0 (a multiple of the grid). Only
    # these are shared with another slot (kronk/engine/engine.py, "Shared prefixes").
    exact: int = 0
    # The first position whose sliding-window cells the sequence holds (0: all): a slot restored from a snapshot
    # of a sliding-window model holds only that window, and is cut no lower (prefix_cache.Window)
    floor: int = 0
    # (slot, its job, position): this slot's prefill waits until that slot, still prefilling that job, has
    # computed the prefix the two prompts share up to position, then copies it instead of computing it again
    share_wait: tuple[Slot, Job, int] | None = None

    @property
    def n_past(self) -> int:
        return len(self.cache)

    def describe(self) -> dict:
        return {"id": self.id, "state": self.state.value, "n_past": self.n_past,
                "request_id": self.job.request.request_id if self.job else None}
