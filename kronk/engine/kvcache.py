"""KV cache types: names -> ggml types, and the rules llama.cpp enforces on them."""

from __future__ import annotations

import llama_cpp

from kronk.errors import InvalidRequest

# ggml_type ids (ggml.h); stable across llama.cpp versions.
GGML_TYPES: dict[str, int] = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "iq4_nl": 20, "bf16": 30,
}

# bytes per element (block size / block bytes), for memory estimates
BYTES_PER_ELEMENT: dict[str, float] = {
    "f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q5_1": 24 / 32, "q5_0": 22 / 32,
    "q4_1": 20 / 32, "q4_0": 18 / 32, "iq4_nl": 18 / 32,
}

FLASH_ATTN = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


def resolve_kv_types(type_k: str, type_v: str, flash_attn: str) -> tuple[int, int, int]:
    """ggml type ids for K and V and the flash-attention mode to use.

    A quantized V cache needs flash attention: with ``auto`` it is turned on, with
    ``off`` the combination is refused before anything is loaded.
    """
    for param, t in (("cache_type_k", type_k), ("cache_type_v", type_v)):
        if t not in GGML_TYPES:
            raise InvalidRequest(
                f"unknown KV cache type {t!r} for {param}; choose one of {', '.join(GGML_TYPES)}", param=param
            )
    if flash_attn not in FLASH_ATTN:
        raise InvalidRequest(f"flash_attn must be auto, on or off, not {flash_attn!r}", param="flash_attn")
    v_quantized = type_v not in ("f32", "f16", "bf16")
    if v_quantized:
        if flash_attn == "off":
            raise InvalidRequest(
                f"a quantized V cache ({type_v}) needs flash attention; set flash_attn to auto or on, "
                "or use an f16 V cache",
                param="cache_type_v",
            )
        flash_attn = "on"
    return GGML_TYPES[type_k], GGML_TYPES[type_v], FLASH_ATTN[flash_attn]
