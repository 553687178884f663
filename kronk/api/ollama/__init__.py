"""Ollama's native API (``/api/*``) over kronk's engine, store, pull jobs and pool."""
