"""The llama.cpp engine: one context, N sequence slots, one decode thread (continuous batching).

Each step is one ``llama_decode`` holding the pending token of every generating
slot plus chunks of waiting prompts. A prompt's last token is always evaluated in
a step of its own, as a single row, exactly like a generated token: so a request
computes the same logits whether its prompt came from the cache, from a long
batch or alone, and temperature-0 output does not depend on what else runs.

Speculative decoding (``speculative``: ngram or draft; kronk/engine/speculative.py) adds, behind a generating
slot's pending token, the tokens a drafter guesses come next: the one decode evaluates them all, the slot's
sampler chain samples row after row, and each sampled token that equals the draft lets the next row's logits
count too. Every token goes through the same per-token path (``_sample``) as without speculation; the KV of
the rows after the first mismatch is dropped. Verify batches are kept within the rows whose logits llama.cpp
computes exactly as for one row (``invariant_rows``), so the output is the same with speculation on and off.

Shared prefixes: a prompt whose start another slot holds (a shared system prompt, a RAG template, a
conversation continued on another slot) gets that KV copied into its own sequence (``llama_memory_seq_cp``)
instead of computing it again, and prefills only the rest. A prompt that shares its start with one another slot
is still prefilling (several users arriving at once with the same instructions) waits for that slot to compute
it, then copies it: the shared part is prefilled once. Only whole chunks of the prefill grid computed from
position 0 are copied (``Slot.exact``): their KV is exactly what this prompt's own prefill computes, so the
output is the same as without sharing.

A shared KV pool (``kv_unified``, on when ``batch_invariant`` is off): the slots' sequences live in one pool of
``kv_pool_tokens`` cells (llama.cpp's unified KV cache), each up to ``ctx_size``, so many slots cost no more
memory than a few full contexts. A decode that finds no free cells (``llama_decode`` returns 1 and changes
nothing) first takes the cells of idle slots' caches, least recently used first (saved to the RAM prefix cache
when it is on); when none are left, the newest running request is swapped out: its sequence's state goes to
host memory (``llama_state_seq_get_data``) and comes back into a slot, before any new request is admitted, when
there is room. The oldest request always goes on, so every request finishes. New requests are admitted while
the running ones' prompts and outputs leave room for their prompt.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import hashlib
import logging
import math
import queue
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import llama_cpp

from kronk.engine.chat import ChatTemplate
from kronk.engine.config import EngineConfig
from kronk.engine.embeddings import EmbeddingRunner
from kronk.engine.kvcache import BYTES_PER_ELEMENT, resolve_kv_types
from kronk.engine.model import LlamaModel, physical_cores
from kronk.engine.prefix_cache import (
    DiskPrefixCache,
    Identity,
    RamPrefixCache,
    Snapshot,
    TierCounters,
    Window,
    common_prefix,
    file_fingerprint,
)
from kronk.engine.protocol import Engine, EngineStats, GenerationChunk, GenerationRequest, TokenLogprob
from kronk.engine.rerank import RerankRunner, is_reranker
from kronk.engine.sampling import NoValidToken, SamplerChain
from kronk.engine.slots import Job, Slot, SlotState, Swapped
from kronk.engine.speculative import DraftModel, NgramDraft, invariant_rows
from kronk.engine.text import StopMatcher
from kronk.errors import (
    ContextLengthExceeded,
    EngineError,
    EngineOverloaded,
    InvalidRequest,
    KronkError,
    Unsupported,
)
from kronk.settings import pool_tokens

log = logging.getLogger("kronk.engine")


# A prefix shared with another slot is copied when it saves at least this many tokens of prefill (a copy moves
# the whole sequence's KV buffer: far cheaper than computing a chunk, not free).
SHARE_MIN_TOKENS = 64
# What a slot gives up is kept in the RAM prefix cache when it holds at least this many tokens.
SAVE_MIN_TOKENS = 128
# A request swapped out of a full shared KV pool comes back when the pool has room for it and this many more
# tokens (so that it is not swapped out again at the next step).
SWAP_HEADROOM = 64


class LlamaEngine(Engine):
    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.name = cfg.name
        gpu = cfg.gpu_layers != 0 and bool(llama_cpp.llama_supports_gpu_offload())
        type_k, type_v, flash = resolve_kv_types(cfg.cache_type_k, cfg.cache_type_v, cfg.flash_attn)
        self.model = LlamaModel(cfg.model_path, cfg.gpu_layers, cfg.main_gpu, cfg.tensor_split,
                                repack=not cfg.batch_invariant, llama_log=cfg.llama_log)
        self.threads = cfg.threads or physical_cores()
        self.embedding_only = cfg.embedding if cfg.embedding is not None else self.model.is_embedding_model
        src = cfg.chat_template or self.model.chat_template
        m = self.model
        self.template = ChatTemplate(src, m.token_text(m.bos) if m.bos >= 0 else "",
                                     m.token_text(m.eos) if m.eos >= 0 else "") if src else None
        self._eog = m.eog_tokens()
        self._embedder = EmbeddingRunner(m, self.threads, cfg.embedding_ctx, pooled_model=self.embedding_only)
        # a reranker (rank pooling in its GGUF) is an embedding-only model scored on a context of its own
        self._reranker = (RerankRunner(m, self.threads, cfg.embedding_ctx, invariant=cfg.batch_invariant)
                          if is_reranker(m) else None)

        # counters
        self.n_requests = self.n_prompt = self.n_reused = self.n_completion = 0
        self.n_drafted = self.n_accepted = 0  # speculative decoding: draft tokens verified, and accepted
        self.n_shared = 0  # prompt tokens copied from another slot's KV (part of n_reused)
        self.speculative = "off"
        self.spec_rows = 1  # the most rows a step's generation decode may hold (see _drafts)
        self._ngram: dict[int, NgramDraft] = {}  # per slot, for its current job
        self._drafter: DraftModel | None = None
        self.ctx = None
        self.slots: list[Slot] = []
        # prefix caches beyond the slots (kronk/engine/prefix_cache.py) and the slots' own numbers as a tier
        self.slot_tier = TierCounters()
        self.window = Window()  # the model's sliding window, where a sequence may be cut (set with the caches)
        self.ram: RamPrefixCache | None = None
        self.disk: DiskPrefixCache | None = None
        self._persist_q: queue.Queue[Snapshot | None] | None = None
        self._persister: threading.Thread | None = None
        if self.embedding_only:
            return

        ctx_slot = cfg.ctx_size
        if m.n_ctx_train > 0:
            ctx_slot = min(ctx_slot, m.n_ctx_train)
        p = llama_cpp.llama_context_default_params()
        self.unified = cfg.unified
        p.n_ctx = pool_tokens(ctx_slot, cfg.kv_pool_tokens) if self.unified else ctx_slot * cfg.parallel
        p.n_batch = cfg.batch_size
        p.n_ubatch = cfg.n_ubatch  # EngineConfig checked it and the rest against batch_size
        p.n_seq_max = cfg.parallel
        p.n_threads = self.threads
        p.n_threads_batch = cfg.threads_batch or self.threads
        p.type_k, p.type_v, p.flash_attn_type = type_k, type_v, flash
        p.swa_full = cfg.swa_full
        p.kv_unified = self.unified
        p.no_perf = True
        p.embeddings = False
        self.ctx = llama_cpp.llama_init_from_model(m.ptr, p)
        if not self.ctx:
            m.close()
            raise EngineError(
                f"llama.cpp could not create a context for {cfg.name} (ctx_size={cfg.ctx_size} x parallel="
                f"{cfg.parallel}, KV {cfg.cache_type_k}/{cfg.cache_type_v}): not enough memory, or a KV type "
                "this model/backend does not support"
            )
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        # a slot's sequence: its own stream, or with a shared pool up to ctx_size of the pool's cells
        self.n_ctx_slot = (min(ctx_slot, llama_cpp.llama_n_ctx_seq(self.ctx)) if self.unified
                           else llama_cpp.llama_n_ctx_seq(self.ctx))
        self.pool_cells = int(llama_cpp.llama_n_ctx(self.ctx)) if self.unified else 0
        self.n_batch = llama_cpp.llama_n_batch(self.ctx)  # llama.cpp caps it at the context's cells
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        # The prefill grid: a chunk is one llama_decode, so it fits the batch (a context smaller than the
        # grid only ever holds prompts shorter than it, so this changes no chunk).
        self.prefill_grid = min(cfg.prefill_chunk, self.n_batch)
        self.slots = [Slot(i) for i in range(cfg.parallel)]
        # shared prefixes need sequences whose KV can be cut at any position (not a recurrent state)
        cuttable = not llama_cpp.llama_model_is_recurrent(m.ptr) and not llama_cpp.llama_model_is_hybrid(m.ptr)
        self.share_prefixes = cfg.share_prefixes and len(self.slots) > 1 and cuttable
        self._kv_bytes_per_cell = self._estimate_kv_bytes_per_cell()
        self._setup_prefix_caches(cuttable, type_k, type_v, flash, gpu)
        # see _pad_slots: with flash attention on the CPU, batch invariance needs no micro-batch of one row
        self._pad_decodes = (cfg.batch_invariant and not gpu and len(self.slots) > 1
                             and flash != llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        self._pad_token = m.bos if m.bos >= 0 else 0
        self._setup_speculation(type_k, type_v, flash)

        self._incoming: collections.deque[Job] = collections.deque()
        self._waiting: collections.deque[Job] = collections.deque()
        self._swapped: collections.deque[Job] = collections.deque()  # out of the shared pool, oldest first
        self.n_preempted = 0
        self._starts: collections.deque[float] = collections.deque(maxlen=32)  # when jobs got slots: Retry-After
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"kronk-decode-{cfg.name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return self.model.tokenize(text, add_special, parse_special)

    def detokenize(self, tokens: list[int]) -> str:
        return self.model.detokenize(tokens)

    def apply_chat_template(self, messages: list[dict[str, Any]], tools: list[dict] | None = None,
                            add_generation_prompt: bool = True, **kwargs: Any) -> str:
        if self.template is None:
            raise Unsupported(f"model {self.name} has no chat template; use /v1/completions or configure "
                              "chat_template for it", param="model")
        return self.template.render(messages, tools, add_generation_prompt, **kwargs)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        job = self._make_job(request)
        if self.disk is not None:  # a file read: off the decode thread, before the job gets a slot
            job.disk_looked = True
            try:
                job.restore = await asyncio.to_thread(self._from_disk, job.prompt)
            except OSError as e:  # an unreadable shared volume costs this request its restore, nothing more
                log.warning("%s: the disk prefix cache could not be read: %s", self.name, e)
        self._submit(job)
        done = False
        try:
            while True:  # one chunk per decode step (Job.flush); the consumer coalesces if it lags
                item = await job.queue.get()
                if isinstance(item, BaseException):
                    done = True
                    raise item
                if item.finish_reason:
                    done = True
                    yield item
                    return
                yield item
        finally:
            if not done:
                job.cancelled = True
                with self._cv:
                    self._cv.notify()

    async def embed(self, inputs: list[str] | list[list[int]], normalize: bool = True,
                    max_tokens: int | None = None) -> tuple[list[list[float]], int]:
        if self._reranker is not None:  # its pooled output is a score, not a vector
            raise Unsupported(f"model {self.name} is a reranker; use /v1/rerank", param="model")
        return await asyncio.to_thread(self._embedder.embed, inputs, normalize, max_tokens)

    async def rerank(self, query: str, documents: list[str], max_tokens: int | None = None) -> tuple[list[float], int]:
        """Each document's relevance score for ``query`` (kronk/engine/rerank.py), and the tokens scored."""
        if self._reranker is None:
            raise Unsupported(f"model {self.name} is not a reranker (its GGUF does not pool by rank); use a reranker "
                              "model (the catalog's capability rerank, e.g. bge-reranker:v2-m3)", param="model")
        return await asyncio.to_thread(self._reranker.rerank, query, documents, max_tokens)

    def stats(self) -> EngineStats:
        used = sum(s.n_past for s in self.slots)
        total = (self.pool_cells if getattr(self, "unified", False)
                 else self.n_ctx_slot * len(self.slots) if self.slots else 0)
        swapped = len(getattr(self, "_swapped", ()))
        return EngineStats(
            model=self.name, n_slots=len(self.slots), n_ctx_slot=getattr(self, "n_ctx_slot", 0),
            active=sum(s.state is not SlotState.IDLE for s in self.slots),
            waiting=len(getattr(self, "_waiting", ())) + len(getattr(self, "_incoming", ())) + swapped,
            kv_cells_used=used, kv_cells_total=total,
            kv_bytes=int(total * getattr(self, "_kv_bytes_per_cell", 0)),
            prompt_tokens=self.n_prompt, prompt_tokens_reused=self.n_reused, prompt_tokens_shared=self.n_shared,
            completion_tokens=self.n_completion,
            requests=self.n_requests, slots=[s.describe() for s in self.slots],
            speculative=self.speculative, spec_verify_rows=self.spec_rows,
            spec_draft_tokens=self.n_drafted, spec_accepted_tokens=self.n_accepted,
            prefix_cache=self._tier_stats(used),
            kv_unified=getattr(self, "unified", False), swapped=swapped, preemptions=getattr(self, "n_preempted", 0),
        )

    def _tier_stats(self, cells_used: int) -> dict[str, dict[str, int]]:
        """Each prefix cache tier's numbers (EngineStats.prefix_cache): slot, and ram and disk when they are on."""
        out = {"slot": {**self.slot_tier.as_dict(), "bytes": int(cells_used * getattr(self, "_kv_bytes_per_cell", 0)),
                        "entries": sum(s.n_past > 0 for s in self.slots)}}
        if self.ram is not None:
            out["ram"] = self.ram.describe()
        if self.disk is not None:
            out["disk"] = self.disk.describe()
        return out

    def seq_state_bytes(self, slot_id: int) -> int:
        """Bytes of the KV data a slot holds now (measured by llama.cpp's state writer)."""
        return int(llama_cpp.llama_state_seq_get_size(self.ctx, slot_id))

    def close(self) -> None:
        if self.ctx is not None:
            with self._cv:
                self._stop = True
                self._cv.notify()
            self._thread.join(timeout=30)
            if self._persister is not None and self._persist_q is not None:
                self._persist_q.put(None)  # after the snapshots still queued: a restart finds them written
                self._persister.join(timeout=60)
                self._persister = None
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if self._drafter is not None:
            self._drafter.close()
            self._drafter = None
        self._embedder.close()
        if self._reranker is not None:
            self._reranker.close()
        self.model.close()

    # ------------------------------------------------------------------ submission
    def _make_job(self, request: GenerationRequest) -> Job:
        if self.embedding_only:
            what = ("a reranker; use /v1/rerank" if self._reranker is not None
                    else "an embedding model; use /v1/embeddings")
            raise Unsupported(f"model {self.name} is {what}", param="model")
        prompt = list(request.prompt)  # token ids: the caller rendered and tokenized the prompt once
        bad = [t for t in prompt if not 0 <= t < self.model.n_vocab]
        if bad:
            raise InvalidRequest(f"prompt token id {bad[0]} is outside the vocabulary", param="prompt")
        if not prompt:
            raise InvalidRequest("the prompt is empty", param="prompt")
        if len(prompt) >= self.n_ctx_slot:
            raise ContextLengthExceeded(len(prompt), self.n_ctx_slot)
        if request.max_tokens is not None and request.max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1", param="max_tokens")
        return Job(request=request, prompt=prompt, loop=asyncio.get_running_loop(), queue=asyncio.Queue())

    def _submit(self, job: Job) -> None:
        with self._cv:
            if self._stop:
                raise EngineError("the engine is shut down")
            self._incoming.append(job)
            self._cv.notify()

    # ------------------------------------------------------------------ decode thread
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._incoming and not self._has_work():
                    self._cv.wait(timeout=1.0)
                if self._stop:
                    break
                self._waiting.extend(self._incoming)
                self._incoming.clear()
            try:
                self._drop_cancelled()
                self._admit()
                self._shed()
                if self._has_work():
                    self._step()
            except Exception as e:  # never let the loop die: fail the running jobs, keep serving
                log.exception("decode step failed")
                self._fail_active(EngineError(f"generation failed: {e}"))
        for s in self.slots:
            if s.job:
                s.job.push(EngineError("the engine was shut down"))
                self._release(s)
        for job in (*self._waiting, *self._swapped):
            job.push(EngineError("the engine was shut down"))
            job.free_samplers()

    def _has_work(self) -> bool:
        return any(s.state is not SlotState.IDLE for s in self.slots) or bool(self._waiting) or bool(self._swapped)

    def _drop_cancelled(self) -> None:
        if any(j.cancelled for j in self._waiting):
            self._waiting = collections.deque(j for j in self._waiting if not j.cancelled)
        if any(j.cancelled for j in self._swapped):
            for j in self._swapped:
                if j.cancelled:
                    j.free_samplers()
            self._swapped = collections.deque(j for j in self._swapped if not j.cancelled)
        for s in self.slots:
            if s.job is not None and s.job.cancelled:
                self._release(s)

    def _admit(self) -> None:
        while self._swapped:  # requests swapped out of the shared pool come back first, oldest first
            idle = [s for s in self.slots if s.state is SlotState.IDLE]
            if not idle or not self._swap_in(min(idle, key=lambda s: (s.n_past, s.last_used)), self._swapped[0]):
                return  # new requests wait behind them
            self._swapped.popleft()
        while self._waiting:
            idle = [s for s in self.slots if s.state is SlotState.IDLE]
            if not idle or (self.unified and not self._room_for(self._waiting[0])):
                return
            job = self._waiting.popleft()
            best = max(idle, key=lambda s: (common_prefix(s.cache, job.prompt), -s.last_used))
            try:
                self._start(best, job)
            except Exception as e:  # this request's problem only (its sampler, grammar...): end it, keep the others
                if not isinstance(e, KronkError):
                    log.exception("could not start %s", job.request.request_id or "a request")
                    e = EngineError(f"could not start the request: {e}")
                    # how far _start got with the slot's KV is unknown: leave the slot empty
                    self._clear(best)
                if best.job is job:
                    self._release(best)  # frees the job's samplers too
                else:
                    job.free_samplers()
                job.push(e)
            else:
                self._starts.append(time.perf_counter())

    def _shed(self) -> None:
        """Admission control, once the idle slots took what they could (every job left really waits): a job that
        waited longer than ``queue_timeout_s``, and the newest beyond ``max_queued``, end with EngineOverloaded
        (503 with Retry-After), so a waiting request is never cut later nor waits without bound."""
        if not self._waiting:
            return
        cfg, n = self.cfg, len(self.slots)
        if cfg.queue_timeout_s:
            now = time.perf_counter()
            late = [j for j in self._waiting if now - j.submitted > cfg.queue_timeout_s]
            if late:
                self._waiting = collections.deque(j for j in self._waiting if now - j.submitted <= cfg.queue_timeout_s)
                for job in late:
                    after = self._retry_after()
                    job.push(EngineOverloaded(
                        f"The request waited {now - job.submitted:.0f} s for one of {self.name}'s {n} slots "
                        f"without getting one (queue_timeout_s={cfg.queue_timeout_s:g}). Retry after about "
                        f"{after:.0f} s.", code="queue_timeout", retry_after_s=after))
        while len(self._waiting) > cfg.max_queued:
            job = self._waiting.pop()  # the newest: the ones waiting longer keep their place
            after = self._retry_after()
            job.push(EngineOverloaded(
                f"{self.name} is at capacity: its {n} slots are busy and {cfg.max_queued} requests already wait "
                f"for one (max_queued={cfg.max_queued}). Retry after about {after:.0f} s.", retry_after_s=after))

    def _retry_after(self) -> float:
        """About how long the requests waiting now take to get slots, at the rate requests got slots lately
        (whole seconds, 1 to 60): when a retry may find room."""
        if not self._starts:
            return 1.0
        span = time.perf_counter() - self._starts[0]
        rate = len(self._starts) / span if span > 0 else float("inf")
        return float(min(60, max(1, math.ceil(len(self._waiting) / rate))))

    def _start(self, slot: Slot, job: Job) -> None:
        req, m = job.request, self.model
        suppress = self._eog if req.ignore_eos else None
        job.chain = SamplerChain(m.vocab, m.n_vocab, req.sampling, suppress_tokens=suppress)
        if req.min_tokens > 0 and not req.ignore_eos:
            job.min_chain = SamplerChain(m.vocab, m.n_vocab, req.sampling, suppress_tokens=self._eog)
        job.stopper = StopMatcher(req.stop) if req.stop else None
        reuse = min(common_prefix(slot.cache, job.prompt), len(job.prompt) - 1)
        if not self.window.keeps(slot.floor, reuse):  # a slot restored from a snapshot is cut no lower than that
            reuse = 0
        found = self._cached(job, reuse) if self.ram is not None or job.disk_looked else None
        keep = reuse if found is None else 0
        if slot.n_past - keep >= SHARE_MIN_TOKENS:  # the slot gives up what it holds
            self.slot_tier.evictions += 1
            self._save_to_ram(slot, keep)
        if found is not None:
            reuse = self._restore(slot, *found)
            job.from_tier = (found[0], reuse) if reuse else None
        grid = self.prefill_grid
        line = reuse // grid * grid
        if (self.share_prefixes and reuse - line < SHARE_MIN_TOKENS and line <= slot.exact
                and len(job.prompt) - 1 >= line + grid and self.window.keeps(slot.floor, line)):
            # a few tokens past a grid line (a BOS, a short earlier prompt) and at least a whole chunk more to
            # prefill: computing those few again keeps this prefill on the grid from position 0, so its chunks
            # can be copied by other slots (_borrow)
            reuse = line
        if reuse < slot.n_past and not llama_cpp.llama_memory_seq_rm(self.mem, slot.id, reuse, -1):
            llama_cpp.llama_memory_seq_rm(self.mem, slot.id, 0, -1)
            reuse = 0
        del slot.cache[reuse:]
        slot.exact = min(slot.exact, reuse) // grid * grid
        if reuse == 0:
            slot.floor = 0
        slot.job, job.n_reused, job.started = job, reuse, time.perf_counter()
        slot.pending = job.prompt[reuse:]
        self.n_requests += 1
        self.n_prompt += len(job.prompt)
        self.n_reused += reuse
        if self.share_prefixes:  # what other slots hold now, and then what one of them is still prefilling
            self._borrow(slot)
            slot.share_wait = self._donor_to_wait_for(slot)
        self._count_tiers(job)
        if self.speculative == "ngram":  # a fresh index over this job's context (the slot's cache from here on)
            self._ngram[slot.id] = NgramDraft(self.cfg.spec_ngram_min, self.cfg.spec_ngram_max)
        self._advance_prefill(slot)

    # ------------------------------------------------------------------ prefix caches (RAM, disk)
    def _setup_prefix_caches(self, cuttable: bool, type_k: int, type_v: int, flash: int, gpu: bool) -> None:
        """The RAM and disk tiers as configured, for a model whose KV can be cut at any position (a recurrent
        state cannot be restored up to a part of it). Their identity is everything a KV state depends on."""
        cfg = self.cfg
        ram = (cfg.prefix_cache_bytes if cfg.prefix_cache_bytes is not None
               else int(self._kv_bytes_per_cell * self.n_ctx_slot * len(self.slots)))
        disk = cfg.prefix_cache_disk_bytes if cfg.prefix_cache_dir else 0
        n_swa = int(llama_cpp.llama_model_n_swa(self.model.ptr))
        # a sliding window of another shape than llama.cpp's standard one (Llama 4's chunks), or one whose cells
        # llama.cpp prunes as it goes (swa_full off): where a restored sequence may be cut is not known
        if not cuttable or not (ram or disk) or (n_swa and (not cfg.swa_full or self.model.architecture == "llama4")):
            return
        self.window = Window(n_swa)
        src = self.template.source if self.template is not None else ""
        identity = Identity.of(
            model=file_fingerprint(cfg.model_path), llama_cpp=llama_cpp.__version__,
            system=llama_cpp.llama_print_system_info().decode(errors="replace"),
            template=hashlib.blake2b(src.encode(), digest_size=16).hexdigest(), type_k=type_k, type_v=type_v,
            flash_attn=flash, n_ctx_slot=self.n_ctx_slot, swa_full=cfg.swa_full, repack=not cfg.batch_invariant,
            gpu_layers=cfg.gpu_layers if gpu else 0, threads=self.threads,
            threads_batch=cfg.threads_batch or self.threads,
            prefill_grid=self.prefill_grid, n_ubatch=cfg.n_ubatch)
        self.identity = identity
        if ram:
            self.ram = RamPrefixCache(ram, identity, self.window)
        if disk:
            try:
                self.disk = DiskPrefixCache(cfg.prefix_cache_dir, disk, identity, self.window)
            except OSError as e:  # a read-only or missing shared volume: serve without the disk tier
                log.warning("%s: no disk prefix cache in %s: %s", cfg.name, cfg.prefix_cache_dir, e)
                return
            self._persist_q = queue.Queue(maxsize=4)
            self._persister = threading.Thread(target=self._persist_loop, name=f"kronk-persist-{cfg.name}",
                                               daemon=True)
            self._persister.start()

    def _from_disk(self, prompt: list[int]) -> tuple[Snapshot, int] | None:
        """The disk tier's snapshot for ``prompt`` (read and verified), when it holds at least SHARE_MIN_TOKENS
        more of it than any slot or the RAM tier (looked at without locks: a hint; _start decides)."""
        assert self.disk is not None
        limit = len(prompt) - 1
        n = self.disk.best_match(prompt, limit)
        if n < SHARE_MIN_TOKENS:
            return None
        have = max((common_prefix(list(s.cache), prompt, limit) for s in self.slots), default=0)
        if self.ram is not None:
            got = self.ram.find(prompt, limit, touch=False)  # _start looks again, and that one counts
            have = max(have, got[1] if got else 0)
        if n < have + SHARE_MIN_TOKENS:
            return None
        return self.disk.load(prompt, limit)

    def _cached(self, job: Job, reuse: int) -> tuple[str, Snapshot, int] | None:
        """The RAM or disk snapshot to restore for ``job`` (its tier, the snapshot, the tokens it gives): the
        longest, when it gives at least SHARE_MIN_TOKENS more than the slot's own ``reuse``. Counts the tiers'
        hits and misses."""
        limit = len(job.prompt) - 1
        if reuse >= limit:
            return None
        options: list[tuple[str, Snapshot, int]] = []
        if self.ram is not None:
            got = self.ram.find(job.prompt, limit)
            if got is not None:
                options.append(("ram", got[0], got[1]))
        if job.restore is not None:
            snap, n = job.restore
            job.restore = None
            options.append(("disk", snap, common_prefix(snap.tokens, job.prompt, limit)))
        best = max(options, key=lambda o: o[2], default=None)
        if best is not None and best[2] < reuse + SHARE_MIN_TOKENS:
            best = None
        for tier, cache in (("ram", self.ram), ("disk", self.disk if job.disk_looked else None)):
            if cache is not None and (best is None or best[0] != tier):
                cache.counters.misses += 1
        return best

    def _restore(self, slot: Slot, tier: str, snap: Snapshot, n: int) -> int:
        """Load ``snap`` into ``slot``'s sequence (it replaces what the slot held): the tokens it gives the
        prompt, ``n``; 0 when llama.cpp refused the data (the slot is then empty and the snapshot dropped)."""
        self._clear(slot)
        size = len(snap.data)
        buf = ((ctypes.c_uint8 * size).from_buffer(snap.data) if isinstance(snap.data, bytearray)
               else (ctypes.c_uint8 * size).from_buffer_copy(snap.data))
        cache = self._tier(tier)
        assert cache is not None
        loaded = llama_cpp.llama_state_seq_set_data(self.ctx, buf, size, slot.id) == size
        while not loaded and self.unified and self._evict_idle(exclude=slot):  # a full pool: idle caches go first
            llama_cpp.llama_memory_seq_rm(self.mem, slot.id, 0, -1)
            loaded = llama_cpp.llama_state_seq_set_data(self.ctx, buf, size, slot.id) == size
        if not loaded:
            log.warning("%s: llama.cpp refused a %s prefix cache snapshot of %d tokens", self.name, tier,
                        len(snap.tokens))
            llama_cpp.llama_memory_seq_rm(self.mem, slot.id, 0, -1)
            if isinstance(cache, RamPrefixCache):
                cache.discard(snap)
            cache.counters.misses += 1
            return 0
        slot.cache = list(snap.tokens)
        slot.exact = snap.exact
        slot.floor = self.window.floor(len(snap.tokens))  # llama.cpp restores the sliding window's cells only
        return n

    def _tier(self, tier: str) -> RamPrefixCache | DiskPrefixCache | None:
        return self.ram if tier == "ram" else self.disk

    def _count_tiers(self, job: Job) -> None:
        """Where a started job's reused prompt tokens came from: a RAM or disk restore (what is left of it after
        the grid rounding), and the slots (its own, or a copy of another's) for the rest."""
        restored = 0
        if job.from_tier is not None:
            tier, n = job.from_tier
            cache = self._tier(tier)
            restored = min(n, job.n_reused)
            if cache is not None and restored:
                cache.counters.hits += 1
                cache.counters.tokens += restored
        from_slots = job.n_reused - restored
        self.slot_tier.tokens += from_slots
        if from_slots:
            self.slot_tier.hits += 1
        else:
            self.slot_tier.misses += 1

    def _snapshot(self, slot: Slot) -> Snapshot | None:
        """What ``slot``'s sequence holds, as llama.cpp's state bytes (only its cache's tokens: a speculative step
        that just ended the request still has its draft rows' cells)."""
        llama_cpp.llama_memory_seq_rm(self.mem, slot.id, slot.n_past, -1)
        size = int(llama_cpp.llama_state_seq_get_size(self.ctx, slot.id))
        data = bytearray(size)
        if size == 0 or llama_cpp.llama_state_seq_get_data(
                self.ctx, (ctypes.c_uint8 * size).from_buffer(data), size, slot.id) != size:
            return None
        return Snapshot(tuple(slot.cache), slot.exact, data, self.identity.digest)

    def _save_to_ram(self, slot: Slot, keep: int) -> None:
        """Keep what ``slot`` holds in the RAM tier before the slot gives it up, down to its first ``keep`` tokens
        (unless it is short, or there). A sliding-window model's snapshot serves only prompts that hold it
        whole (prefix_cache.Window), so for these the slot's exact prefix (a shared system prompt) is kept too,
        as a snapshot of its own: the slot is cut to it first (``keep`` is at most that)."""
        ram, w = self.ram, self.window
        if ram is None or slot.n_past < SAVE_MIN_TOKENS:
            return
        if not ram.covers(slot.cache):
            snap = self._snapshot(slot)
            if snap is not None:
                ram.put(snap)
        exact = slot.exact
        if (w.n_swa and keep <= exact and SAVE_MIN_TOKENS <= exact < slot.n_past
                and w.keeps(slot.floor, exact) and not ram.covers(slot.cache[:exact])
                and llama_cpp.llama_memory_seq_rm(self.mem, slot.id, exact, -1)):
            del slot.cache[exact:]
            snap = self._snapshot(slot)
            if snap is not None:
                ram.put(snap)

    def _persist(self, slot: Slot) -> None:
        """Queue what a finished request's slot holds for the disk tier (written by the persister thread); skipped
        when it is short, already on disk, or the writer is behind."""
        q = self._persist_q
        if (self.disk is None or q is None or slot.n_past < self.cfg.persist_min_tokens or q.full()
                or self.disk.holds(slot.cache)):
            return
        snap = self._snapshot(slot)
        if snap is not None:
            try:
                q.put_nowait(snap)
            except queue.Full:
                pass

    def _persist_loop(self) -> None:
        assert self._persist_q is not None and self.disk is not None
        while True:
            snap = self._persist_q.get()
            if snap is None:
                return
            try:
                self.disk.write(snap)
            except OSError as e:  # a full or read-only volume: the conversation just is not kept
                log.warning("%s: could not write a prefix cache file: %s", self.name, e)

    # ------------------------------------------------------------------ shared prefixes
    def _borrow(self, s: Slot) -> None:
        """Copy into ``s`` the longest exact prefix of its prompt another slot holds, where that saves at least
        SHARE_MIN_TOKENS of prefill. The copy is llama.cpp's whole-sequence copy (done at
        the next decode, before that decode writes anything), then cut to the shared part."""
        job, grid = s.job, self.prefill_grid
        assert job is not None
        limit = len(job.prompt) - 1  # the prompt's last token is always evaluated in a step of its own
        donor, best = None, s.n_past
        for t in self.slots:
            if t is s or t.exact < best + SHARE_MIN_TOKENS:
                continue
            n = common_prefix(t.cache, job.prompt, min(t.exact, limit)) // grid * grid
            if n >= best + SHARE_MIN_TOKENS and self.window.keeps(t.floor, n):
                donor, best = t, n
        if donor is None:
            return
        llama_cpp.llama_memory_seq_cp(self.mem, donor.id, s.id, -1, -1)
        if not llama_cpp.llama_memory_seq_rm(self.mem, s.id, best, -1):  # cannot happen outside recurrent models
            llama_cpp.llama_memory_seq_rm(self.mem, s.id, 0, -1)
            s.cache.clear()
            s.exact = s.floor = 0
            s.pending = list(job.prompt)
            self.n_reused -= job.n_reused
            job.n_reused = 0
            return
        gained = best - job.n_reused
        job.from_tier = None  # a restore into s (if any) is replaced by the longer copy
        s.cache = donor.cache[:best]
        s.exact = best
        s.floor = donor.floor
        s.pending = job.prompt[best:]
        job.n_reused = best
        self.n_reused += gained
        self.n_shared += gained

    def _donor_to_wait_for(self, s: Slot) -> tuple[Slot, Job, int] | None:
        """A slot still prefilling a prompt that shares at least SHARE_MIN_TOKENS more with ``s``'s than ``s``
        holds, on the exact path (every chunk so far whole and from position 0): ``s`` waits for it to reach the
        shared part (the slot, its job, the position) and copies it then. The longest shared part wins."""
        job, grid = s.job, self.prefill_grid
        assert job is not None
        best: tuple[Slot, Job, int] | None = None
        for t in self.slots:
            if (t is s or t.state is not SlotState.PREFILL or t.job is None or t.share_wait is not None
                    or t.exact != t.n_past):
                continue
            limit = min(len(job.prompt), len(t.job.prompt)) - 1
            target = common_prefix(t.job.prompt, job.prompt, limit) // grid * grid
            if (target >= s.n_past + SHARE_MIN_TOKENS and target > t.exact and self.window.keeps(t.floor, target)
                    and (best is None or target > best[2])):
                best = (t, t.job, target)
        return best

    def _still_waiting(self, s: Slot) -> bool:
        """Whether ``s``'s prefill still waits for its donor; when the wait is over, copy what the donor (or any
        slot) holds now and go on."""
        if s.share_wait is None:
            return False
        t, job, target = s.share_wait
        if t.job is job and t.state is SlotState.PREFILL and t.exact < target:
            return True
        s.share_wait = None
        self._borrow(s)
        self._advance_prefill(s)
        return False

    @staticmethod
    def _advance_prefill(slot: Slot) -> None:
        if len(slot.pending) <= 1:
            slot.next_token = slot.pending.pop()
            slot.state = SlotState.GENERATING
        else:
            slot.state = SlotState.PREFILL

    def _add(self, n: int, token: int, pos: int, seq: int, logits: bool) -> None:
        if not 0 <= n < self.n_batch:  # a row past the llama_batch's arrays would corrupt memory
            raise EngineError(f"batch row {n} is outside the llama_batch of {self.n_batch} rows")
        b = self.batch
        b.token[n] = token
        b.pos[n] = pos
        b.n_seq_id[n] = 1
        b.seq_id[n][0] = seq
        b.logits[n] = logits

    def _step(self) -> None:
        gen = [s for s in self.slots if s.state is SlotState.GENERATING]
        if gen:
            # One row per generating slot (its pending token), followed by its draft when speculating: the
            # rows of a slot sit at consecutive positions, all with logits.
            drafts = self._drafts(gen) if self.speculative != "off" else {}
            n = 0
            for s in gen:
                s.row = n
                self._add(n, s.next_token, s.n_past, s.id, True)
                for i, t in enumerate(drafts.get(s.id, ())):
                    self._add(n + 1 + i, t, s.n_past + 1 + i, s.id, True)
                n += 1 + len(drafts.get(s.id, ()))
            pads = self._pad_slots(gen, drafts)
            for p in pads:  # a neighbour's row beside a slot generating alone, for the kernels' sake (_pad_slots)
                self._add(n, self._pad_token, p.n_past, p.id, False)
                n += 1
            try:
                done = self._decode_in_pool(n)
            finally:
                for p in pads:
                    llama_cpp.llama_memory_seq_rm(self.mem, p.id, p.n_past, -1)
            if not done:  # a shared pool out of cells with no idle cache left to take: the newest request goes
                self.n_drafted -= sum(len(d) for d in drafts.values())
                self._make_room_for(self._oldest_active())
                return
            for s in gen:  # sample now: the prompt decodes below overwrite the logits
                draft = drafts.get(s.id, [])
                s.cache.append(s.next_token)
                try:
                    self._verify(s, draft)
                except Exception as e:  # this request's problem only: end it, keep the others running
                    log.exception("sampling failed for %s", s.job.request.request_id if s.job else "?")
                    job = s.job
                    self._release(s)
                    if job is not None:
                        job.push(e if isinstance(e, KronkError) else EngineError(f"sampling failed: {e}"))
                finally:
                    if draft:  # the KV of the rows not accepted (s.cache holds exactly what the KV holds)
                        llama_cpp.llama_memory_seq_rm(self.mem, s.id, s.n_past, -1)
            for s in gen:
                if s.job is not None:
                    s.job.flush()
        # Prompts are evaluated one sequence per llama_decode, in chunks on a fixed grid of
        # positions (multiples of prefill_chunk): a token is then always computed in the same
        # company, whatever else runs, so outputs do not depend on concurrency.
        grid = self.prefill_grid
        budget = grid if gen else self.n_batch  # a chunk is at most grid <= n_batch tokens
        for s in sorted((s for s in self.slots if s.state is SlotState.PREFILL), key=lambda s: s.job.started):
            if self._still_waiting(s):
                continue
            while s.state is SlotState.PREFILL and budget > 0:
                pos = s.n_past
                take = min(grid - pos % grid, len(s.pending) - 1)
                for i in range(take):
                    self._add(i, s.pending[i], pos + i, s.id, False)
                if not self._decode_in_pool(take):
                    # no cells for this chunk: it waits while the others go on, unless it is the oldest request,
                    # which always goes on (the newest makes room)
                    if s is self._oldest_active():
                        self._make_room_for(s)
                    budget = 0
                    break
                s.cache.extend(s.pending[:take])
                del s.pending[:take]
                if pos == s.exact and take == grid:  # a whole grid chunk on the exact path
                    s.exact += grid
                self._advance_prefill(s)
                budget -= take
            if budget <= 0:
                break

    def _pad_slots(self, gen: list[Slot], drafts: dict[int, list[int]]) -> list[Slot]:
        """Slots whose sequences get a throw-away row in this step's generation decode (see below).

        llama.cpp splits a decode into one micro-batch per run of consecutive sequence ids (one KV stream
        each), and its CPU flash-attention kernel computes a micro-batch of one row of one sequence over 512
        cells or more with the work split along the cells (another summation order than any other shape). A
        slot generating alone, or beside slots whose ids are not next to its own, would get other numbers than
        beside a neighbour, and temperature-0 output would depend on the load. So with flash attention on the
        CPU and batch_invariant, every generating slot without a draft that has no generating neighbour gets
        one: the neighbouring slot with the least cache adds a row at the end of its cache, without logits (its
        KV cell is removed right after the decode). Its cost is a row of the decode (memory-bound on a CPU)."""
        if not self._pad_decodes:
            return []
        generating = {s.id for s in gen}
        pads: list[Slot] = []
        for s in gen:
            if drafts.get(s.id) or s.id - 1 in generating or s.id + 1 in generating:
                continue
            if any(p.id in (s.id - 1, s.id + 1) for p in pads):
                continue
            near = [self.slots[i] for i in (s.id - 1, s.id + 1)
                    if 0 <= i < len(self.slots) and self.slots[i].n_past < self.n_ctx_slot - 1]
            if near:
                pads.append(min(near, key=lambda t: t.n_past))
        return pads

    # ------------------------------------------------------------------ speculative decoding
    def _setup_speculation(self, type_k: int, type_v: int, flash: int) -> None:
        """Turn speculation on as configured, where it is possible: not for recurrent models (their state cannot
        drop the rejected rows); with batch_invariant, only as many rows as llama.cpp computes exactly alike."""
        cfg, m = self.cfg, self.model
        if cfg.speculative == "off":
            return
        if llama_cpp.llama_model_is_recurrent(m.ptr) or llama_cpp.llama_model_is_hybrid(m.ptr):
            log.info("%s: speculative decoding is off (a recurrent model cannot drop rejected tokens)", cfg.name)
            return
        limit = min(cfg.draft_max + 1, self.n_batch)
        self.spec_rows = (invariant_rows(m, self.threads, limit, flash, type_k, type_v) if cfg.batch_invariant
                          else limit)
        if self.spec_rows <= 1:
            log.warning("%s: speculative decoding is off: a multi-row decode does not give the logits of one row "
                        "here, so temperature-0 output would change (batch_invariant)", cfg.name)
            return
        if cfg.speculative == "draft":
            if not cfg.draft_model:
                raise EngineError(f"model {cfg.name}: speculative is draft but no draft_model is set")
            self._drafter = DraftModel(cfg.draft_model, m, len(self.slots), self.n_ctx_slot, self.threads,
                                       gpu_layers=cfg.gpu_layers, llama_log=cfg.llama_log, pool_cells=self.pool_cells)
        self.speculative = cfg.speculative
        log.info("%s: speculative decoding %s, up to %d rows per step", cfg.name, self.speculative, self.spec_rows)

    def _drafts(self, gen: list[Slot]) -> dict[int, list[int]]:
        """Each generating slot's draft for this step (slot id -> tokens; none: no speculation for it).

        The step's generation decode holds at most ``spec_rows`` rows (all slots' rows go through one matrix
        product, and llama.cpp computes a row differently beyond it), shared evenly between the slots. A
        draft never runs past the slot's context, its max_tokens, ``draft_max``; one shorter than
        ``draft_min`` is not tried."""
        cfg = self.cfg
        per_slot = self.spec_rows // len(gen) - 1  # draft tokens each slot may add
        if per_slot < max(1, cfg.draft_min):
            return {}
        wants: dict[int, int] = {}
        for s in gen:
            req, job = s.job.request, s.job
            k = min(per_slot, cfg.draft_max, self.n_ctx_slot - 2 - s.n_past)
            if req.max_tokens is not None:
                k = min(k, req.max_tokens - job.n_gen - 1)
            if k >= max(1, cfg.draft_min):
                wants[s.id] = k
        if not wants:
            return {}
        by_id = {s.id: s for s in gen}
        if self._drafter is not None:
            got = self._drafter.draft([(i, [*by_id[i].cache, by_id[i].next_token], k) for i, k in wants.items()])
        else:
            got = {i: self._ngram[i].draft([*by_id[i].cache, by_id[i].next_token], k) for i, k in wants.items()
                   if i in self._ngram}
        out = {i: d[:wants[i]] for i, d in got.items() if len(d) >= max(1, cfg.draft_min)}
        self.n_drafted += sum(len(d) for d in out.values())
        return out

    def _decode(self, n: int) -> None:
        if not self._decode_in_pool(n):
            raise EngineError("llama_decode found no free KV cells")

    def _decode_in_pool(self, n: int) -> bool:
        """Decode the batch's first ``n`` rows: True when done. With a shared pool, a decode that finds no free
        cells (llama_decode returns 1, having changed nothing) takes idle slots' caches and tries again; False
        when none is left to take."""
        self.batch.n_tokens = n
        while True:
            rc = llama_cpp.llama_decode(self.ctx, self.batch)
            if rc == 0:
                return True
            if rc != 1 or not self.unified:
                raise EngineError(f"llama_decode returned {rc}")
            if not self._evict_idle():
                return False

    # ------------------------------------------------------------------ a shared KV pool (kv_unified)
    def _active_cells(self) -> int:
        """Cells the running requests hold or will hold once their prompts are in (shared cells count once per
        sequence: an upper bound)."""
        return sum(s.n_past + len(s.pending) + 1 for s in self.slots if s.job is not None)

    def _room_for(self, job: Job) -> bool:
        """Whether a new request's prompt fits the pool beside what the running ones hold (idle slots' caches
        count as free: they are taken when needed). Always true with nothing running."""
        return self._active_cells() + len(job.prompt) + 1 <= self.pool_cells

    def _oldest_active(self) -> Slot | None:
        return min((s for s in self.slots if s.job is not None), key=lambda s: s.job.started, default=None)

    def _make_room_for(self, s: Slot | None) -> None:
        """Swap out the newest running request other than ``s`` (the oldest, which must go on). With ``s``
        alone in the pool and still no room, its request cannot be served in this pool: it ends with an error."""
        others = [t for t in self.slots if t.job is not None and t is not s]
        if others:
            self._swap_out(max(others, key=lambda t: t.job.started))
        elif s is not None and s.job is not None:
            job = s.job
            self._release(s)
            self._clear(s)
            job.push(EngineError(f"{self.name}'s KV pool of {self.pool_cells} cells has no room for this request "
                                 f"({len(job.prompt)} prompt tokens); raise kv_pool_tokens"))

    def _clear(self, s: Slot) -> None:
        """Empty a slot's sequence."""
        llama_cpp.llama_memory_seq_rm(self.mem, s.id, 0, -1)
        s.cache.clear()
        s.exact = s.floor = 0
        if self._drafter is not None:
            self._drafter.forget(s.id)

    def _evict_idle(self, exclude: Slot | None = None) -> bool:
        """Take the cells of the least recently used idle slot's cache (kept in the RAM prefix cache when it is
        on); False when no idle slot holds any."""
        held = [t for t in self.slots if t.state is SlotState.IDLE and t.n_past and t is not exclude]
        if not held:
            return False
        t = min(held, key=lambda t: t.last_used)
        if t.n_past >= SHARE_MIN_TOKENS:
            self.slot_tier.evictions += 1
        self._save_to_ram(t, 0)
        self._clear(t)
        return True

    def _swap_out(self, s: Slot) -> None:
        """Move a running request out of the pool: its sequence's state to host memory, its slot freed (its
        samplers, stop matcher and output so far stay with the job). It comes back first (_admit)."""
        job = s.job
        assert job is not None
        snap = self._snapshot(s)
        if snap is None:  # llama.cpp wrote no state: the request cannot be kept
            self._release(s)
            self._clear(s)
            job.push(EngineError(f"{self.name}: a request could not be swapped out of the full KV pool"))
            return
        job.swapped = Swapped(snap, list(s.pending), s.next_token, s.state, s.floor)
        self._clear(s)
        s.job, s.pending, s.share_wait, s.state = None, [], None, SlotState.IDLE
        s.last_used = time.monotonic()
        self._swapped.append(job)
        self._swapped = collections.deque(sorted(self._swapped, key=lambda j: j.started))
        self.n_preempted += 1
        log.info("%s: KV pool full: swapped out %s (%d tokens) until there is room", self.name,
                 job.request.request_id or "a request", len(snap.tokens))

    def _swap_in(self, slot: Slot, job: Job) -> bool:
        """Put a swapped-out request back into ``slot`` (idle) when the pool has room for it and a little more:
        True when it is back."""
        sw = job.swapped
        assert sw is not None
        need = len(sw.snapshot.tokens) + len(sw.pending) + 1 + SWAP_HEADROOM
        if self._active_cells() + need > self.pool_cells:
            return False
        if slot.n_past:
            if slot.n_past >= SHARE_MIN_TOKENS:
                self.slot_tier.evictions += 1
            self._save_to_ram(slot, 0)
            self._clear(slot)
        data = sw.snapshot.data
        assert isinstance(data, bytearray)
        buf = (ctypes.c_uint8 * len(data)).from_buffer(data)
        while llama_cpp.llama_state_seq_set_data(self.ctx, buf, len(data), slot.id) != len(data):
            llama_cpp.llama_memory_seq_rm(self.mem, slot.id, 0, -1)
            if not self._evict_idle(exclude=slot):
                return False
        slot.cache, slot.exact, slot.floor = list(sw.snapshot.tokens), sw.snapshot.exact, sw.floor
        slot.pending, slot.next_token, slot.state, slot.job = sw.pending, sw.next_token, sw.state, job
        job.swapped = None
        if self.speculative == "ngram":
            self._ngram[slot.id] = NgramDraft(self.cfg.spec_ngram_min, self.cfg.spec_ngram_max)
        return True

    def _verify(self, s: Slot, draft: list[int]) -> None:
        """Sample the slot's rows in order (row ``s.row`` + i predicts the token after draft[:i]): a sampled
        token equal to the draft's next one is accepted (its KV, written by this step's decode, joins the
        slot's cache) and the next row's logits count too; the first other token becomes the pending token.
        Without a draft this is the one-token step. A sampled chain takes the same rule (llama.cpp's): each
        emitted token is the chain's own sample from its row, as without speculation."""
        for i in range(len(draft) + 1):
            tok = self._sample(s, s.row + i)
            if tok is None:  # the request ended (stop, limit, grammar complete)
                return
            if i < len(draft) and tok == draft[i]:
                s.cache.append(tok)
                self.n_accepted += 1
                continue
            s.next_token = tok
            return

    def _sample(self, s: Slot, row: int) -> int | None:
        """Sample one token from batch row ``row`` and emit it (stop strings, end of generation, limits,
        repetition guard, logprobs): the token to evaluate next, or None when the request ended."""
        job = s.job
        assert job is not None and job.chain is not None
        try:
            if job.min_chain is not None and job.n_gen < job.request.min_tokens:
                tok = job.min_chain.sample(self.ctx, row)
                job.chain.accept(tok)
            else:
                tok = job.chain.sample(self.ctx, row)
        except NoValidToken:
            # Only a grammar can rule out every token: its document is complete (and end-of-generation
            # is suppressed by ignore_eos/min_tokens or logit_bias), so the answer is done.
            self._finish(s, "stop", tail=True)
            return None
        now = time.perf_counter()
        if job.n_gen == 0:
            job.first_token = now
        job.n_gen += 1
        self.n_completion += 1
        req = job.request
        if (self.model.is_eog(tok) and not req.ignore_eos) or tok in req.stop_token_ids:
            self._finish(s, "stop", tail=True)
            return None
        job.out_tokens.append(tok)
        piece = self.model.piece(tok)
        if req.logprobs is not None:  # only for a request that asks: the logits row is still this step's
            lp, top = job.chain.logprobs(self.ctx, row, tok, req.logprobs)
            job.out_logprobs.append(TokenLogprob(tok, piece, lp, [(t, self.model.piece(t), v) for t, v in top]))
        text = job.decoder.feed(piece)
        if job.stopper is not None:
            text, hit = job.stopper.feed(text)
            if hit:
                job.out_text.append(text)
                self._finish(s, "stop", tail=False)
                return None
        job.out_text.append(text)
        if job.guard is not None and job.guard.feed(tok, piece):
            # a loop (a grammar keeps a small model from ending in many ways): end it, as if a limit was hit
            log.info("repetition guard ended %s after %d tokens: %s", req.request_id or "a request", job.n_gen,
                     job.guard.reason)
            self._finish(s, "length", tail=True)
        elif (req.max_tokens is not None and job.n_gen >= req.max_tokens) or s.n_past + 1 >= self.n_ctx_slot:
            self._finish(s, "length", tail=True)
        else:
            return tok
        return None

    def _finish(self, s: Slot, reason: str, tail: bool) -> None:
        job = s.job
        assert job is not None
        if tail:
            rest = job.decoder.flush()
            if job.stopper is not None:
                text, hit = job.stopper.feed(rest)
                rest = text if hit else text + job.stopper.flush()
            job.out_text.append(rest)
        n_past = s.n_past
        self._persist(s)
        self._release(s)  # free the slot before the caller hears of the end
        job.flush(reason, context_tokens=n_past)

    def _release(self, s: Slot) -> None:
        if s.job is not None:
            s.job.free_samplers()
        s.job = None
        s.pending = []
        s.share_wait = None
        s.state = SlotState.IDLE
        s.last_used = time.monotonic()

    def _fail_active(self, err: EngineError) -> None:
        for s in self.slots:
            if s.job is not None:
                s.job.push(err)
                self._release(s)
            self._clear(s)

    def _estimate_kv_bytes_per_cell(self) -> float:
        m = self.model
        arch = m.architecture
        n_layer = llama_cpp.llama_model_n_layer(m.ptr)
        n_head_kv = int(m.meta(f"{arch}.attention.head_count_kv") or llama_cpp.llama_model_n_head_kv(m.ptr))
        k_len = int(m.meta(f"{arch}.attention.key_length") or m.n_embd // max(1, llama_cpp.llama_model_n_head(m.ptr)))
        v_len = int(m.meta(f"{arch}.attention.value_length") or k_len)
        return n_layer * n_head_kv * (k_len * BYTES_PER_ELEMENT[self.cfg.cache_type_k]
                                      + v_len * BYTES_PER_ELEMENT[self.cfg.cache_type_v])
