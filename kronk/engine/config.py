"""Engine configuration: what one replica's llama.cpp context is built from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kronk.errors import EngineError
from kronk.settings import (
    CatalogDefaults,
    FlashAttn,
    KVCacheType,
    ModelConfig,
    Settings,
    Speculative,
    batching_problems,
    default_parallel,
    pool_tokens,
    unified,
)

# The micro-batch (llama.cpp's n_ubatch) when none is set: the largest block of tokens one graph computes.
DEFAULT_UBATCH = 512


class EngineSettingsError(EngineError):
    """An impossible combination of engine settings, found before llama.cpp is touched."""

    code = "invalid_engine_settings"


def _server(name: str, **kw: Any) -> Any:
    """A field whose default is the server setting's own (Settings is the one source of defaults)."""
    info = Settings.model_fields[name]
    kw.setdefault("description", info.description)
    return Field(default=info.get_default(call_default_factory=True), **kw)


class EngineConfig(BaseModel):
    """Every user-facing field has the Settings default (the engine built without settings behaves as a
    server with its defaults); prefill_chunk, swa_full and embedding_ctx are the engine's own knobs."""

    model_config = ConfigDict(extra="forbid")

    model_path: str = Field(description="Path of the GGUF file (first part of a split GGUF).")
    name: str = Field(default="model", description="The model id clients use.")
    parallel: int | None = _server("parallel", ge=1, le=256)
    ctx_size: int = _server("ctx_size", ge=64, description="Context length of one slot (at most the GGUF's "
                            "trained context: the engine caps it).")
    cache_type_k: KVCacheType = _server("kv_cache_type", description="K cache type.")
    cache_type_v: KVCacheType = _server("kv_cache_type", description="V cache type.")
    flash_attn: FlashAttn = _server("flash_attn")
    gpu_layers: int = _server("gpu_layers", description="Layers on the GPU (-1: all; ignored without a GPU build).")
    main_gpu: int = _server("main_gpu", ge=0)
    tensor_split: list[float] | None = _server("tensor_split")
    threads: int | None = _server("threads", ge=1, description="Decode threads (None: physical cores).")
    threads_batch: int | None = _server("threads_batch", ge=1, description="Prompt threads (None: threads).")
    batch_size: int = _server("batch_size", ge=16, description="Max tokens in one llama_decode.")
    ubatch_size: int | None = Field(
        default=None, ge=16, description="Tokens llama.cpp computes at once (n_ubatch; None: "
        f"min(batch_size, {DEFAULT_UBATCH})); at most batch_size.")
    prefill_chunk: int = Field(
        default=256, ge=16,
        description="The prefill grid: prompts are evaluated in chunks that end on multiples of it, and at most "
        "this many prompt tokens go into a step while other sequences are generating (bounds their stall). At "
        "most batch_size; left unset, it is min(256, the micro-batch).",
    )
    embedding: bool | None = Field(default=None, description="Embedding model (None: from the GGUF).")
    chat_template: str | None = Field(default=None, description="Built-in template name or Jinja source "
                                      "(None: the GGUF's).")
    swa_full: bool = Field(default=True, description="Full-size sliding-window cache (keeps prefix reuse).")
    share_prefixes: bool = Field(
        default=True, description="Copy a prompt's start from another slot that holds it (or is prefilling it) "
        "instead of computing it again; the output is the same either way (kronk/engine/engine.py).")
    batch_invariant: bool = _server(
        "batch_invariant",
        description="Outputs independent of what else is batched (no CPU weight repacking). Off: repacked "
        "weights, somewhat faster on some CPUs, temperature-0 output may vary with load.",
    )
    kv_unified: bool | None = _server("kv_unified")
    kv_pool_tokens: int | None = _server("kv_pool_tokens", ge=256)
    embedding_ctx: int = Field(default=8192, ge=64, description="Context of the embeddings context.")
    max_queued: int = _server("max_queued", ge=0)
    queue_timeout_s: float = _server("queue_timeout_s", ge=0)
    llama_log: bool = _server("llama_log")
    speculative: Speculative = _server("speculative")
    spec_ngram_min: int = _server("spec_ngram_min", ge=1, le=16)
    spec_ngram_max: int = _server("spec_ngram_max", ge=1, le=16)
    draft_max: int = _server("draft_max", ge=1, le=64)
    draft_min: int = _server("draft_min", ge=0, le=64)
    draft_model: str | None = Field(default=None, description="GGUF path of the draft model (speculative: draft): "
                                    "a small model with the same vocabulary.")
    prefix_cache_bytes: int | None = _server("prefix_cache_bytes", ge=0)
    prefix_cache_disk_bytes: int = _server("prefix_cache_disk_bytes", ge=0)
    prefix_cache_dir: str | None = Field(
        default=None, description="The disk prefix cache's folder (None: no disk tier); engine_config sets it from "
        "the server's prefix_cache_dir.")
    persist_min_tokens: int = Field(
        default=256, ge=1, description="The shortest finished sequence the disk tier stores (a shorter one is "
        "prefilled again in less time than its file takes to read).")

    @property
    def n_ubatch(self) -> int:
        """The micro-batch llama.cpp's context is created with."""
        return self.ubatch_size if self.ubatch_size is not None else min(self.batch_size, DEFAULT_UBATCH)

    @property
    def unified(self) -> bool:
        """Whether the slots share one KV pool (kv_unified as set, else when batch_invariant is off)."""
        return unified(self.kv_unified, self.batch_invariant)

    @property
    def pool_cells(self) -> int:
        """The shared pool's cells (with ``unified``): kv_pool_tokens, else ctx_size x POOL_CONTEXTS (the engine
        takes ctx_size within the model's trained context first)."""
        return pool_tokens(self.ctx_size, self.kv_pool_tokens)

    @model_validator(mode="after")
    def _check_batching(self) -> EngineConfig:
        """Settings that would make a step write past the llama_batch (batch_size rows) are refused here.

        A step's decodes hold either one row per generating slot (at most ``parallel``) or one prefill chunk
        (at most ``prefill_chunk``), so both must fit in ``batch_size``. The prefill grid left at its default
        shrinks to the micro-batch instead (a chunk is then one ubatch): it is fixed per engine, so outputs
        still do not depend on load; one set explicitly larger than batch_size is refused."""
        if self.parallel is None:  # unset: the server's rule (many slots with a shared pool)
            self.parallel = default_parallel(self.kv_unified, self.batch_invariant)
        if self.kv_unified is None:  # unset: a shared pool unless batch invariance is asked for
            self.kv_unified = unified(None, self.batch_invariant)
        problems = batching_problems(self.parallel, self.batch_size, self.ctx_size, self.kv_unified,
                                     self.batch_invariant, self.kv_pool_tokens)
        if self.ubatch_size is not None and self.ubatch_size > self.batch_size:
            problems.append(f"ubatch_size {self.ubatch_size} is more than batch_size {self.batch_size} (a "
                            "micro-batch is a part of one llama_decode); lower ubatch_size or raise batch_size")
        explicit = "prefill_chunk" in self.model_fields_set
        if explicit and self.prefill_chunk > self.batch_size:
            problems.append(f"prefill_chunk {self.prefill_chunk} is more than batch_size {self.batch_size} (a "
                            "prompt chunk is one llama_decode); lower prefill_chunk or raise batch_size")
        if self.spec_ngram_min > self.spec_ngram_max:
            problems.append(f"spec_ngram_min {self.spec_ngram_min} is more than spec_ngram_max {self.spec_ngram_max}")
        if self.draft_min > self.draft_max:
            problems.append(f"draft_min {self.draft_min} is more than draft_max {self.draft_max}")
        if self.speculative == "draft" and not self.draft_model:
            problems.append("speculative is draft but no draft_model (a GGUF path) is set")
        if problems:
            raise EngineSettingsError(f"impossible engine settings for model {self.name}: " + "; ".join(problems),
                                      param="batch_size")
        if not explicit and self.prefill_chunk > self.n_ubatch:
            self.prefill_chunk = self.n_ubatch
        return self

    @classmethod
    def from_model(cls, m: ModelConfig, model_path: str | Path, chat_template: str | None = None,
                   llama_log: bool = False) -> EngineConfig:
        """From a resolved ModelConfig (Settings.resolved_model) and the GGUF path: its values as they are.

        ``chat_template`` is used only when the model has none (prefer passing the manifest to
        ``resolved_model``, or :func:`engine_config`). An unresolved model fails validation here."""
        data = {f: getattr(m, f) for f in _MODEL_FIELDS}
        if data["chat_template"] is None:
            data["chat_template"] = chat_template
        return cls(model_path=str(model_path), llama_log=llama_log, **data)


# What an EngineConfig takes from a (resolved) ModelConfig: every field the two share by name.
_MODEL_FIELDS = tuple(f for f in EngineConfig.model_fields if f in ModelConfig.model_fields)


def engine_config(settings: Settings, model: ModelConfig | str, model_path: str | Path,
                  manifest: CatalogDefaults | None = None) -> EngineConfig:
    """The engine config of one served model, resolved once: the model's own fields (``model``: its config as
    the user wrote it, unresolved, or its name) win; where it sets none, the catalog's values from the
    store's ``manifest`` (``context_length`` within the server's ``ctx_size``, the recommended
    ``kv_cache_type``, ``chat_template``), then the server's settings. See ``Settings.resolved_model``."""
    resolved = settings.resolved_model(model, catalog=manifest)
    cfg = EngineConfig.from_model(resolved, model_path, llama_log=settings.llama_log)
    if cfg.prefix_cache_disk_bytes:
        cfg.prefix_cache_dir = str(settings.prefix_cache_dir or settings.models_path / ".kv-cache")
    return cfg
