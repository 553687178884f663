"""Fixtures shared by the whole suite.

``api_url``: kronk's real FastAPI app over the in-process backend (``kronk.serving.local``), serving both small
real models (Gemma 3 270M, the base model without a chat template, and SmolLM2-135M-Instruct with its own) over
real HTTP from this process: the OpenAI shaping, without Ray, in seconds. The Serve-level tests
(tests/integration) start a real Ray cluster instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kronk.api.app import create_app
from kronk.api.families import HANDLERS
from kronk.api.limits import Limits
from kronk.catalog import Catalog
from kronk.engine import EngineConfig
from kronk.engine.engine import LlamaEngine
from kronk.serving.local import LocalBackend
from kronk.serving.sampling import model_sampling
from kronk.serving.service import ModelService
from kronk.settings import SamplingDefaults, Settings
from tests.helpers import GEMMA, SMOL, http_server, openai_client
from tests.models import gemma_path, smollm_path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No KRONK_* / HF_* variable from the machine, and a home of the test's own (no ~/.kronk/config.yaml)."""
    for var in list(os.environ):
        if var.startswith(("KRONK_", "HF_", "HUGGING_FACE")):
            monkeypatch.delenv(var)
    home = tmp_path / "home"
    monkeypatch.setenv("KRONK_HOME", str(home))
    return home


@pytest.fixture
def no_hub_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Hugging Face token or endpoint from the machine (pull tests talk to their own stand-in hub)."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "KRONK_HF_TOKEN", "HF_ENDPOINT", "KRONK_HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)


@contextmanager
def small_model_services() -> Iterator[dict[str, ModelService]]:
    """One service per small model, as a replica runs it (the same handlers, the sampling defaults a replica
    resolves for it), closed at the end."""
    engines = {GEMMA: LlamaEngine(EngineConfig(batch_invariant=True,
                                               model_path=gemma_path(), name=GEMMA, parallel=4, ctx_size=2048,
                                               chat_template="gemma")),
               SMOL: LlamaEngine(EngineConfig(batch_invariant=True,
                                              model_path=smollm_path(), name=SMOL, parallel=2, ctx_size=2048))}
    catalog = Catalog.load()  # the sampling defaults a replica resolves: the GGUF's, the catalog's, the server's
    try:
        yield {name: ModelService(e, name, HANDLERS, sampling=model_sampling(SamplingDefaults(), e, catalog.get(name)))
               for name, e in engines.items()}
    finally:
        for e in engines.values():
            e.close()


@contextmanager
def serving(services: dict[str, ModelService], home: Path) -> Iterator[str]:
    """The services behind the in-process app and real HTTP: the server's URL."""
    settings = Settings(home=home)
    with http_server(create_app(LocalBackend.of_services(services, settings),
                                limits=Limits.from_settings(settings))) as url:
        yield url


@pytest.fixture(scope="session")
def services() -> Iterator[dict[str, ModelService]]:
    """The small models' services, shared by the session."""
    with small_model_services() as svcs:
        yield svcs


@pytest.fixture(scope="session")
def api_url(services: dict[str, ModelService], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(services, tmp_path_factory.mktemp("kronk-home")) as url:
        yield url


@pytest.fixture(scope="session")
def client(api_url: str):
    return openai_client(api_url)
