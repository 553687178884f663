"""Engine batch settings checked against each other before llama.cpp is touched (no model is loaded here)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from kronk.engine.config import DEFAULT_UBATCH, EngineConfig, EngineSettingsError
from kronk.errors import EngineError, KronkError
from kronk.settings import DEFAULT_MODEL, MAX_CONTEXT_CELLS, Settings

# Not a file: an error about it would mean the engine got as far as loading the model.
MISSING = "/nonexistent/model.gguf"

pytestmark = pytest.mark.usefixtures("clean_env")  # every test: no machine env, its own home


@pytest.mark.parametrize(("kw", "named"), [
    ({"parallel": 32, "batch_size": 16}, ["parallel 32", "batch_size 16"]),
    ({"batch_size": 32, "prefill_chunk": 64}, ["prefill_chunk 64", "batch_size 32"]),
    ({"batch_size": 64, "ubatch_size": 128}, ["ubatch_size 128", "batch_size 64"]),
    ({"ctx_size": 2**30, "parallel": 4, "batch_invariant": True}, ["ctx_size x parallel", str(MAX_CONTEXT_CELLS)]),
    ({"kv_pool_tokens": 2**32}, ["kv_pool_tokens 4294967296", str(MAX_CONTEXT_CELLS)]),
    ({"kv_unified": True, "batch_invariant": True}, ["kv_unified needs batch_invariant false"]),
])
def test_an_impossible_combination_is_refused_before_loading(kw: dict, named: list[str]) -> None:
    with pytest.raises(EngineSettingsError) as e:
        EngineConfig(model_path=MISSING, name="m", **kw)
    assert isinstance(e.value, EngineError) and isinstance(e.value, KronkError)
    assert e.value.code == "invalid_engine_settings"
    assert "model m" in e.value.message and all(n in e.value.message for n in named), e.value.message


def test_the_engine_never_loads_the_model_with_impossible_settings() -> None:
    from kronk.engine.engine import LlamaEngine

    with pytest.raises(EngineSettingsError):
        LlamaEngine(EngineConfig(model_path=MISSING, parallel=32, batch_size=16))
    # with possible ones it goes as far as the (missing) file
    with pytest.raises(EngineError, match="model file not found"):
        LlamaEngine(EngineConfig(model_path=MISSING, parallel=16, batch_size=16))


def test_small_legal_batch_sizes_are_accepted_and_the_default_grid_follows_the_micro_batch() -> None:
    c = EngineConfig(model_path=MISSING, batch_size=16, parallel=4)
    assert (c.batch_size, c.n_ubatch, c.prefill_chunk) == (16, 16, 16)
    c = EngineConfig(model_path=MISSING, batch_size=32, parallel=32)
    assert (c.n_ubatch, c.prefill_chunk) == (32, 32)
    c = EngineConfig(model_path=MISSING)  # the defaults
    assert (c.batch_size, c.n_ubatch, c.prefill_chunk) == (512, DEFAULT_UBATCH, 256)
    c = EngineConfig(model_path=MISSING, batch_size=2048)
    assert (c.n_ubatch, c.prefill_chunk) == (DEFAULT_UBATCH, 256)
    c = EngineConfig(model_path=MISSING, batch_size=512, ubatch_size=64)
    assert (c.n_ubatch, c.prefill_chunk) == (64, 64)
    # an explicit grid within batch_size stays as given (a chunk larger than the micro-batch is still one decode)
    c = EngineConfig(model_path=MISSING, batch_size=512, ubatch_size=64, prefill_chunk=128)
    assert (c.n_ubatch, c.prefill_chunk) == (64, 128)
    # the resolved config survives a round trip (a replica rebuilds it from its dump)
    again = EngineConfig(**EngineConfig(model_path=MISSING, batch_size=32).model_dump())
    assert (again.prefill_chunk, again.n_ubatch) == (32, 32)


def test_settings_refuse_a_model_whose_resolved_values_are_impossible() -> None:
    with pytest.raises(ValidationError, match=f"model {DEFAULT_MODEL}: parallel 32 is more than batch_size 16"):
        Settings(parallel=32, batch_size=16)
    with pytest.raises(ValidationError, match="model small: parallel 32 is more than batch_size 16"):
        Settings(parallel=32, models=[{"name": "small", "batch_size": 16}])
    # a model that fixes it for itself is fine; the values are each model's own, then the server's
    s = Settings(batch_size=16, models=[{"name": "a", "parallel": 16}, {"name": "b", "parallel": 4}])
    assert [s.resolved_model(m).parallel for m in ("a", "b")] == [16, 4]
    with pytest.raises(ValidationError, match="model b: ctx_size x parallel"):
        Settings(models=[{"name": "a"}, {"name": "b", "ctx_size": 2**29, "parallel": 8, "batch_size": 16,
                                                  "batch_invariant": True}])


def test_server_start_fails_early_with_a_clear_message(clean_env: Path) -> None:
    from kronk.cli.main import cli

    out = CliRunner().invoke(cli, ["server", "start", "--batch-size", "16", "--parallel", "32"])
    assert out.exit_code == 2, out.output
    assert "parallel 32 is more than batch_size 16" in out.output and "raise batch_size" in out.output
    assert not clean_env.exists()  # it stopped before creating anything
