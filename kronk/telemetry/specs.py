"""Every kronk metric: name, kind, labels, help, histogram boundaries. Pure data.

kronk's own ``GET /metrics`` serves ``kronk_x``; Ray's Prometheus endpoint exports
the same metric as ``ray_kronk_x`` (:data:`RAY_PREFIX` + name), with Ray's labels
added. The names differ so that a Prometheus scraping both never sums one number
twice. Label names avoid the ones Prometheus and its Operator attach to targets
(``endpoint``, ``instance``, ``job``, ``pod``...): the HTTP endpoint is ``route``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RAY_PREFIX = "ray_"
BASE_LABELS = ("model", "replica")

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class Spec:
    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = BASE_LABELS
    bounds: tuple[float, ...] = ()

    @property
    def ray_name(self) -> str:
        """The name on Ray's Prometheus endpoint."""
        return RAY_PREFIX + self.name


SECONDS_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SECONDS_TTFT = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
                20.0, 30.0, 60.0, 120.0)
SECONDS_ITL = (0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.25,
               0.5, 1.0)
DECODE_TOK_S = (1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 80.0, 100.0, 125.0, 150.0, 200.0, 300.0,
                500.0, 750.0, 1000.0, 2000.0, 5000.0)
PREFILL_TOK_S = (10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 3000.0, 5000.0, 10000.0, 20000.0, 50000.0,
                 100000.0)

REQUESTS = Spec("kronk_requests_total", "counter", "HTTP requests by endpoint (its route template) and status "
                "code, counted by the ingress when the response ends.", (*BASE_LABELS, "route", "status"))
QUEUE_WAIT = Spec("kronk_queue_wait_seconds", "histogram", "Time a generation waited for a sequence slot.",
                  bounds=SECONDS_FAST)
TTFT = Spec("kronk_ttft_seconds", "histogram", "Time to first token: submitted to the engine -> first token "
            "sampled (queue wait + prefill).", bounds=SECONDS_TTFT)
ITL = Spec("kronk_inter_token_latency_seconds", "histogram", "Mean time between tokens of one generation "
           "(decode time / (completion tokens - 1)); one observation per generation.", bounds=SECONDS_ITL)
PROMPT_TOKENS = Spec("kronk_prompt_tokens_total", "counter", "Prompt tokens of finished requests (usage.prompt_"
                     "tokens; embeddings included).")
REUSED_TOKENS = Spec("kronk_prompt_tokens_reused_total", "counter", "Prompt tokens reused from a slot's KV "
                     "cache (prefix cache hits; usage.prompt_tokens_details.cached_tokens).")
COMPLETION_TOKENS = Spec("kronk_completion_tokens_total", "counter", "Generated tokens of finished requests "
                         "(usage.completion_tokens).")
DECODE_TPS = Spec("kronk_decode_tokens_per_second", "histogram", "Decode speed of one generation ((completion "
                  "tokens - 1) / decode time) by the context size at its end.", (*BASE_LABELS, "context_bucket"),
                  bounds=DECODE_TOK_S)
PREFILL_TPS = Spec("kronk_prefill_tokens_per_second", "histogram", "Prefill speed of one generation (prompt "
                   "tokens not reused / prefill time).", bounds=PREFILL_TOK_S)
KV_USED = Spec("kronk_kv_cells_used", "gauge", "KV cache cells holding tokens (all slots of the replica).")
KV_TOTAL = Spec("kronk_kv_cells_total", "gauge", "KV cache cells of the replica (the shared pool, or slots x "
                "context per slot with batch_invariant).")
ACTIVE = Spec("kronk_active_sequences", "gauge", "Sequence slots prefilling or generating.")
WAITING = Spec("kronk_waiting_sequences", "gauge", "Requests waiting for a free sequence slot.")
SPEC_DRAFTED = Spec("kronk_spec_draft_tokens_total", "counter", "Speculative decoding: draft tokens verified "
                    "(prompt lookup or a draft model's guesses, kronk/engine/speculative.py).")
SPEC_ACCEPTED = Spec("kronk_spec_accepted_tokens_total", "counter", "Speculative decoding: draft tokens the model "
                     "accepted (each one a token generated without a decode step of its own).")
SHARED_TOKENS = Spec("kronk_prompt_tokens_shared_total", "counter", "Prompt tokens copied from another slot's KV "
                     "instead of prefilled (shared prefixes; a part of kronk_prompt_tokens_reused_total).")
PREFIX_HITS = Spec("kronk_prefix_cache_hits_total", "counter", "Requests that got prompt tokens from a prefix "
                   "cache tier: slot (their slot, or another slot's copy), ram (a snapshot in host memory), disk (a "
                   "file in prefix_cache_dir).", (*BASE_LABELS, "tier"))
PREFIX_MISSES = Spec("kronk_prefix_cache_misses_total", "counter", "Requests that looked in a prefix cache tier and "
                     "got nothing from it.", (*BASE_LABELS, "tier"))
PREFIX_TOKENS = Spec("kronk_prefix_cache_tokens_total", "counter", "Prompt tokens a prefix cache tier served "
                     "instead of a prefill.", (*BASE_LABELS, "tier"))
PREFIX_EVICTIONS = Spec("kronk_prefix_cache_evictions_total", "counter", "What a prefix cache tier gave up: slot "
                        "contents a new prompt replaced, snapshots and files dropped for room.", (*BASE_LABELS, "tier"))
PREFIX_BYTES = Spec("kronk_prefix_cache_bytes", "gauge", "Bytes a prefix cache tier holds (slot: the KV cells in "
                    "use).", (*BASE_LABELS, "tier"))
# The prefix cache tiers' counters, as EngineStats.prefix_cache names them
PREFIX_COUNTERS = ((PREFIX_HITS, "hits"), (PREFIX_MISSES, "misses"), (PREFIX_TOKENS, "tokens"),
                   (PREFIX_EVICTIONS, "evictions"))
SPEC_ACCEPTANCE = Spec("kronk_spec_acceptance_ratio", "gauge", "Speculative decoding: accepted / drafted tokens "
                       "since the replica started (0 before any draft).")
PULL_JOBS = Spec("kronk_pull_jobs_total", "counter", "Pull jobs that ended, by status (succeeded, failed, "
                 "cancelled).", (*BASE_LABELS, "status"))
PULL_BYTES = Spec("kronk_pull_bytes_total", "counter", "Bytes pulled into the store (downloaded or copied), "
                  "counted when a pull job ends.")
PULL_FAILURES = Spec("kronk_pull_failures_total", "counter", "Pull jobs that failed, by error code.",
                     (*BASE_LABELS, "code"))
MODEL_EVENTS = Spec("kronk_pool_model_events_total", "counter", "Model pool state changes by kind (loading: a "
                    "load started; loaded, unloaded, evicted, error).", (*BASE_LABELS, "event"))
MODEL_LOAD_TIME = Spec("kronk_pool_model_load_seconds", "histogram", "Time to load a pool model (request to "
                       "ready, without its wait for room).", bounds=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
POOL_BYTES = Spec("kronk_pool_reserved_bytes", "gauge", "Memory the pool's loaded models are estimated to take.")
POOL_BUDGET = Spec("kronk_pool_budget_bytes", "gauge", "The pool's memory budget.")

# The model pool's own metrics: present once a pool model has loaded (tests/*/test_model_pool*.py).
POOL_SPECS = (MODEL_EVENTS, MODEL_LOAD_TIME, POOL_BYTES, POOL_BUDGET)

SPECS: dict[str, Spec] = {s.name: s for s in (
    REQUESTS, QUEUE_WAIT, TTFT, ITL, PROMPT_TOKENS, REUSED_TOKENS, COMPLETION_TOKENS, DECODE_TPS, PREFILL_TPS,
    KV_USED, KV_TOTAL, ACTIVE, WAITING, SPEC_DRAFTED, SPEC_ACCEPTED, SHARED_TOKENS, SPEC_ACCEPTANCE, PULL_JOBS,
    PREFIX_HITS, PREFIX_MISSES, PREFIX_TOKENS, PREFIX_EVICTIONS, PREFIX_BYTES,
    PULL_BYTES, PULL_FAILURES, MODEL_EVENTS, MODEL_LOAD_TIME,
    POOL_BYTES, POOL_BUDGET)}
