"""The llama.cpp engine: sequence slots, continuous batching, prefix reuse, sampling."""

from kronk.engine.config import EngineConfig
from kronk.engine.protocol import (
    Engine,
    EngineStats,
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
    Timings,
    Usage,
)

__all__ = [
    "Engine",
    "EngineConfig",
    "EngineStats",
    "GenerationChunk",
    "GenerationRequest",
    "LlamaEngine",
    "SamplingParams",
    "Timings",
    "Usage",
]


def __getattr__(name: str):  # import llama.cpp only when the engine is really used
    if name == "LlamaEngine":
        from kronk.engine.engine import LlamaEngine

        return LlamaEngine
    raise AttributeError(name)
