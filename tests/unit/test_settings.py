"""Settings resolved once: one source of defaults, inheritance by computation, catalog values, from_resolved."""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from kronk.catalog import Catalog
from kronk.engine.config import EngineConfig, engine_config
from kronk.settings import (
    DEFAULT_MODEL,
    MODEL_ONLY_FIELDS,
    ModelConfig,
    Settings,
    inherited_fields,
    load_settings,
    setting_sources,
)
from kronk.store.manifest import Manifest

pytestmark = pytest.mark.usefixtures("clean_env")  # every test: no machine env, its own home


def _other_value(name: str) -> Any:
    """A valid value for Settings field ``name`` that is not its default (and valid beside every other field's
    value from here: kv_unified true would need batch_invariant false)."""
    special = {"kv_pool_tokens": 4096, "kv_unified": False}
    if name in special:
        return special[name]
    info = Settings.model_fields[name]
    default = info.get_default(call_default_factory=True)
    ann = info.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    base = args[0] if typing.get_origin(ann) is not Literal and len(args) == 1 else ann
    if typing.get_origin(base) is Literal:
        return next(v for v in typing.get_args(base) if v != default)
    if base is bool:
        return not default
    if base is int:
        return 2 if default is None else default + 1
    if base is float:
        return 2.0 if default is None else default + 0.5
    if typing.get_origin(base) is list:
        return [0.75, 0.25]
    if typing.get_origin(base) is dict:
        return {"gpu_node": 0.5}
    raise AssertionError(f"no other value for {name}: {ann}")


# ---------------------------------------------------------------------- one source of defaults


def test_every_model_field_has_a_server_default() -> None:
    shared = set(inherited_fields())
    assert shared == set(ModelConfig.model_fields) - set(MODEL_ONLY_FIELDS)
    assert set(MODEL_ONLY_FIELDS) <= set(ModelConfig.model_fields)
    assert not set(MODEL_ONLY_FIELDS) & set(Settings.model_fields)


def test_every_shared_field_inherits_the_servers_value() -> None:
    server = {f: _other_value(f) for f in inherited_fields()}
    s = Settings(**server, models=[{"name": "m"}])
    r = s.resolved_model("m")
    for f in inherited_fields():
        assert getattr(r, f) == getattr(s, f) == server[f], f


def test_the_models_own_value_wins_for_every_shared_field() -> None:
    own = {f: _other_value(f) for f in inherited_fields()}
    r = Settings(models=[{"name": "m", **own}]).resolved_model("m")
    for f, v in own.items():
        assert getattr(r, f) == v, f


def test_a_field_added_to_both_classes_inherits_without_a_list() -> None:
    class MyModel(ModelConfig):
        foo: int | None = None

    class MySettings(Settings):
        foo: int = 7

    s = MySettings(models=[MyModel(name="m"), MyModel(name="n", foo=3)])
    assert "foo" in inherited_fields(MySettings, MyModel)
    assert s.resolved_model("m").foo == 7
    assert s.resolved_model("n").foo == 3


def test_resolved_model_leaves_nothing_for_downstream_to_default() -> None:
    r = Settings(models=[{"name": "m", "parallel": 6, "min_replicas": 3}]).resolved_model("m")
    # only fields whose None means "decided where it runs / from the GGUF" stay None
    assert {f for f, v in r.model_dump().items() if v is None} == {
        "source", "tensor_split", "threads", "threads_batch", "embedding", "chat_template",
        "draft_model",  # no draft model unless the model names one (speculative: draft)
        "prefix_cache_bytes",  # the engine sizes it as its slots' KV cache
        "kv_pool_tokens"}  # ctx_size x 4, the engine's ctx_size (within the model's trained context)
    assert r.kv_unified is True and r.batch_invariant is False  # the defaults: a shared pool
    assert (r.cache_type_k, r.cache_type_v) == ("f16", "f16")
    assert r.target_ongoing_requests == 6.0 and r.max_ongoing_requests == 6 + 64  # parallel + max_queued
    assert r.initial_replicas == 3 and r.max_replicas == 3  # max at least min
    assert Settings(max_queued=3).resolved_model(DEFAULT_MODEL).max_ongoing_requests == 16 + 3
    # parallel unset: 16 slots with a shared KV pool, 4 with a stream of their own each (batch_invariant)
    assert Settings().resolved_model(DEFAULT_MODEL).parallel == 16
    r = Settings(batch_invariant=True).resolved_model(DEFAULT_MODEL)
    assert (r.parallel, r.kv_unified) == (4, False)
    assert Settings().resolved_model(DEFAULT_MODEL).initial_replicas == 1
    assert Settings(models=[{"name": "z", "min_replicas": 0}]).resolved_model("z").initial_replicas == 1


def test_cache_types_fall_back_to_the_resolved_kv_cache_type() -> None:
    s = Settings(kv_cache_type="q8_0", models=[{"name": "a"}, {"name": "b", "kv_cache_type": "q4_0"},
                                               {"name": "c", "cache_type_k": "f16"}])
    assert (s.resolved_model("a").cache_type_k, s.resolved_model("a").cache_type_v) == ("q8_0", "q8_0")
    assert (s.resolved_model("b").cache_type_k, s.resolved_model("b").cache_type_v) == ("q4_0", "q4_0")
    assert (s.resolved_model("c").cache_type_k, s.resolved_model("c").cache_type_v) == ("f16", "q8_0")


def test_engine_config_defaults_are_the_settings_defaults() -> None:
    for f in set(EngineConfig.model_fields) & set(Settings.model_fields):
        assert EngineConfig.model_fields[f].get_default() == Settings.model_fields[f].get_default(), f
    kv = Settings.model_fields["kv_cache_type"].get_default()
    assert EngineConfig.model_fields["cache_type_k"].default == EngineConfig.model_fields["cache_type_v"].default == kv
    assert EngineConfig.model_fields["gpu_layers"].default == -1
    # an engine built without settings is the engine of a server with its defaults
    resolved = Settings().resolved_model(DEFAULT_MODEL)
    assert EngineConfig.from_model(resolved, "x.gguf") == EngineConfig(model_path="x.gguf", name=DEFAULT_MODEL)


def test_from_model_copies_without_fallbacks() -> None:
    with pytest.raises(ValidationError):  # an unresolved model has no values to copy
        EngineConfig.from_model(ModelConfig(name="m"), "x.gguf")
    r = Settings(models=[{"name": "m", "gpu_layers": 0, "batch_invariant": False, "main_gpu": 1,
                          "threads_batch": 3}]).resolved_model("m")
    cfg = EngineConfig.from_model(r, "x.gguf")
    assert (cfg.gpu_layers, cfg.batch_invariant, cfg.main_gpu, cfg.threads_batch) == (0, False, 1, 3)


# ---------------------------------------------------------------------- env knobs are settings


def test_stream_interval_and_llama_log_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.stream_interval_ms, s.llama_log) == (100, False)
    monkeypatch.setenv("KRONK_STREAM_INTERVAL_MS", "250")
    monkeypatch.setenv("KRONK_LLAMA_LOG", "1")
    s = load_settings()
    assert (s.stream_interval_ms, s.llama_log) == (250, True)
    sources = setting_sources()
    assert sources["stream_interval_ms"] == "env KRONK_STREAM_INTERVAL_MS"
    assert sources["llama_log"] == "env KRONK_LLAMA_LOG"
    assert setting_sources({"stream_interval_ms": 0})["stream_interval_ms"] == "flag --stream-interval-ms"
    assert load_settings({"stream_interval_ms": 0}).stream_interval_ms == 0
    monkeypatch.setenv("KRONK_STREAM_INTERVAL_MS", "-1")
    with pytest.raises(ValidationError, match="stream_interval_ms"):
        load_settings()


def test_llama_log_reaches_the_engine_config() -> None:
    s = Settings(llama_log=True)
    assert engine_config(s, DEFAULT_MODEL, "x.gguf").llama_log is True
    assert engine_config(Settings(), DEFAULT_MODEL, "x.gguf").llama_log is False


def test_init_backend_takes_llama_log_and_reads_no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from kronk.engine import model

    monkeypatch.setenv("KRONK_LLAMA_LOG", "1")
    model.init_backend(llama_log=False)
    assert model._logs_quiet
    model.init_backend(llama_log=True)
    assert not model._logs_quiet
    model.init_backend()
    assert model._logs_quiet


def test_list_and_object_settings_from_flag_text_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings({"tensor_split": "0.6,0.4", "resources": '{"gpu_node": 0.1}'})
    assert s.tensor_split == [0.6, 0.4] and s.resources == {"gpu_node": 0.1}
    monkeypatch.setenv("KRONK_TENSOR_SPLIT", "[0.5, 0.5]")
    monkeypatch.setenv("KRONK_RESOURCES", '{"a": 1}')
    s = load_settings()
    assert s.tensor_split == [0.5, 0.5] and s.resources == {"a": 1.0}


def test_config_show_lists_the_new_settings_with_their_source(monkeypatch: pytest.MonkeyPatch) -> None:
    from kronk.cli.config import config

    monkeypatch.setenv("KRONK_STREAM_INTERVAL_MS", "40")
    out = CliRunner().invoke(config, ["show", "--json", "--llama-log", "true"])
    assert out.exit_code == 0, out.output
    rows = {r["setting"]: r for r in json.loads(out.output)["settings"]}
    assert (rows["stream_interval_ms"]["value"], rows["stream_interval_ms"]["source"]) == (
        40, "env KRONK_STREAM_INTERVAL_MS")
    assert (rows["llama_log"]["value"], rows["llama_log"]["source"]) == (True, "flag --llama-log")
    assert rows["batch_invariant"]["source"] == "default" and rows["batch_invariant"]["flag"] == "--batch-invariant"
    assert rows["max_ongoing_requests"]["source"] == "default (parallel + max_queued)"
    text = CliRunner().invoke(config, ["show"]).output
    assert "stream_interval_ms" in text and "env KRONK_STREAM_INTERVAL_MS" in text and "llama_log" in text


# ---------------------------------------------------------------------- resolved settings travel


def test_from_resolved_round_trips_to_args(clean_env: Path) -> None:
    s = load_settings({"port": 9001, "hf_token": "hf_secret", "api_keys": ["k1"], "tensor_split": [0.5, 0.5],
                       "models": [{"name": "m", "parallel": 2}]})
    again = Settings.from_resolved(s.to_args())
    assert again.public_dict() == s.public_dict()
    assert again.to_args() == s.to_args()
    assert again.hf_token is not None and again.hf_token.get_secret_value() == "hf_secret"
    assert again.resolved_model("m") == s.resolved_model("m")


def test_from_resolved_reads_no_env_set_after_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    args = load_settings({"home": str(tmp_path / "h")}).to_args()
    assert "models_dir" not in args and "hf_token" not in args  # None: not in the args
    monkeypatch.setenv("KRONK_PARALLEL", "9")
    monkeypatch.setenv("KRONK_MODELS_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("KRONK_HOME", str(tmp_path / "other-home"))
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.invalid")
    s = Settings.from_resolved(args)
    assert s.parallel is None and s.models_dir is None and s.home == tmp_path / "h"  # None: derived, not 9
    assert s.hf_token is None and s.hf_endpoint is None
    # a token in the args wins over HF_TOKEN
    assert Settings.from_resolved({**args, "hf_token": "hf_args"}).hf_token.get_secret_value() == "hf_args"
    # even a missing home is the code default, not $KRONK_HOME
    assert Settings.from_resolved({}).home == Path.home() / ".kronk"
    # while load_settings does read them
    assert load_settings().parallel == 9


def test_from_resolved_reads_no_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    home = tmp_path / "h"
    args = load_settings({"home": str(home)}).to_args()
    home.mkdir()
    (home / "config.yaml").write_text("port: 9999\nctx_size: 1024\nmodels_dir: /tmp/from-config\n")
    monkeypatch.setenv("KRONK_CONFIG", str(home / "config.yaml"))
    s = Settings.from_resolved(args)
    assert (s.port, s.ctx_size, s.models_dir) == (8000, 8192, None)
    assert load_settings({"home": str(home)}).port == 9999


def test_model_manager_uses_the_resolved_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from kronk.store.manager import ModelManager

    args = load_settings({"home": str(tmp_path / "h"), "models_dir": str(tmp_path / "models")}).to_args()
    monkeypatch.setenv("KRONK_MODELS_DIR", str(tmp_path / "wrong"))
    monkeypatch.setenv("KRONK_BACKGROUND_NICE", "3")
    mm = ModelManager(args)
    assert mm.settings.models_path == tmp_path / "models" and mm.settings.background_nice == 19


# ---------------------------------------------------------------------- catalog values reach the engine


def _manifest(**kw: Any) -> Manifest:
    return Manifest(name="m", ref="m", source="hf", files=[{"name": "m.gguf", "size": 1, "sha256": "0" * 64}],
                    primary="m.gguf", **kw)


def test_catalog_context_and_kv_type_reach_the_engine_when_unset() -> None:
    man = _manifest(context_length=2048, kv_cache_type="q8_0", chat_template="gemma")
    cfg = engine_config(Settings(models=[{"name": "m"}]), "m", "m.gguf", man)
    assert (cfg.ctx_size, cfg.cache_type_k, cfg.cache_type_v, cfg.chat_template) == (2048, "q8_0", "q8_0", "gemma")
    # no manifest (a local GGUF): the server's values
    cfg = engine_config(Settings(models=[{"name": "m"}]), "m", "m.gguf", None)
    assert (cfg.ctx_size, cfg.cache_type_k, cfg.chat_template) == (8192, "f16", None)


def test_server_ctx_size_is_the_budget_for_a_catalog_context() -> None:
    man = _manifest(context_length=131072)
    assert engine_config(Settings(models=[{"name": "m"}]), "m", "m.gguf", man).ctx_size == 8192
    assert engine_config(Settings(ctx_size=65536, models=[{"name": "m"}]), "m", "m.gguf", man).ctx_size == 65536
    assert engine_config(Settings(ctx_size=262144, models=[{"name": "m"}]), "m", "m.gguf", man).ctx_size == 131072


def test_explicit_model_values_beat_the_catalog() -> None:
    man = _manifest(context_length=2048, kv_cache_type="q8_0", chat_template="gemma")
    s = Settings(models=[{"name": "m", "ctx_size": 4096, "kv_cache_type": "q4_0", "chat_template": "chatml"},
                         {"name": "k", "cache_type_v": "f16"}])
    cfg = engine_config(s, s.model("m"), "m.gguf", man)
    assert (cfg.ctx_size, cfg.cache_type_k, cfg.cache_type_v, cfg.chat_template) == (4096, "q4_0", "q4_0", "chatml")
    cfg = engine_config(s, s.model("k"), "m.gguf", man)
    assert (cfg.cache_type_k, cfg.cache_type_v) == ("q8_0", "f16")
    # a server-wide KV type the user chose wins over the catalog's recommendation, also after the trip to a
    # replica (Settings.from_resolved of to_args); the server's default does not
    chosen = Settings(kv_cache_type="q4_0", models=[{"name": "m"}])
    assert engine_config(chosen, "m", "m.gguf", man).cache_type_k == "q4_0"
    assert engine_config(Settings.from_resolved(chosen.to_args()), "m", "m.gguf", man).cache_type_k == "q4_0"
    default = Settings(models=[{"name": "m"}])
    assert engine_config(Settings.from_resolved(default.to_args()), "m", "m.gguf", man).cache_type_k == "q8_0"


def test_a_catalog_entry_gives_the_same_values_as_its_manifest() -> None:
    cat = Catalog.load(Settings())
    entry = next(e for e in cat.list() if e.kv_cache_type == "q8_0")
    r = Settings(models=[{"name": entry.name}]).resolved_model(entry.name, catalog=entry)
    assert r.kv_cache_type == r.cache_type_k == "q8_0"
    assert r.ctx_size == min(entry.context_length, 8192)
