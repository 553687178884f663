"""kronk: a local LLM model server (GGUF through llama.cpp) served as a Ray Serve application."""

__version__ = "0.1.0"
