"""Engine configuration: what one replica's llama.cpp context is built from."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from kronk.settings import FlashAttn, KVCacheType, ModelConfig


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: str = Field(description="Path of the GGUF file (first part of a split GGUF).")
    name: str = Field(default="model", description="The model id clients use.")
    parallel: int = Field(default=4, ge=1, le=256, description="Sequence slots.")
    ctx_size: int = Field(default=8192, ge=64, description="Context length of one slot.")
    cache_type_k: KVCacheType = "f16"
    cache_type_v: KVCacheType = "f16"
    flash_attn: FlashAttn = "auto"
    gpu_layers: int = Field(default=0, description="Layers on the GPU (-1: all; ignored without a GPU build).")
    main_gpu: int = 0
    tensor_split: list[float] | None = None
    threads: int | None = Field(default=None, ge=1, description="Decode threads (default: physical cores).")
    threads_batch: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=512, ge=16, description="Max tokens in one llama_decode.")
    prefill_chunk: int = Field(
        default=256, ge=16,
        description="Max prompt tokens per step while other sequences are generating (bounds their stall).",
    )
    embedding: bool | None = Field(default=None, description="Embedding model (None: from the GGUF).")
    chat_template: str | None = Field(default=None, description="Built-in template name or Jinja source.")
    swa_full: bool = Field(default=True, description="Full-size sliding-window cache (keeps prefix reuse).")
    batch_invariant: bool = Field(
        default=True,
        description="Outputs independent of what else is batched (no CPU weight repacking). Off: repacked "
        "weights, somewhat faster on some CPUs, temperature-0 output may vary with load.",
    )
    embedding_ctx: int = Field(default=8192, ge=64, description="Context of the embeddings context.")

    @classmethod
    def from_model(cls, m: ModelConfig, model_path: str, chat_template: str | None = None) -> EngineConfig:
        """From a resolved ModelConfig (Settings.resolved_model) and the GGUF path."""
        return cls(
            model_path=model_path, name=m.name, parallel=m.parallel or 4, ctx_size=m.ctx_size or 8192,
            cache_type_k=m.cache_type_k or m.kv_cache_type or "f16",
            cache_type_v=m.cache_type_v or m.kv_cache_type or "f16",
            flash_attn=m.flash_attn or "auto", gpu_layers=m.gpu_layers if m.gpu_layers is not None else 0,
            main_gpu=m.main_gpu or 0, tensor_split=m.tensor_split, threads=m.threads,
            threads_batch=m.threads_batch, batch_size=m.batch_size or 512, embedding=m.embedding,
            chat_template=m.chat_template or chat_template,
            batch_invariant=m.batch_invariant if m.batch_invariant is not None else True,
        )
