"""Per-model sampling defaults (kronk/serving/sampling.py): what a request leaves unset takes, per field, the
server's setting the user made, else the GGUF's value, else the catalog entry's, else the server default; and
the request fields that decide the repetition guard (kronk/api/generation.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kronk.api.chat.schemas import ChatCompletionRequest
from kronk.api.generation import generation_request, repetition_guard, sampling_from
from kronk.catalog import Catalog
from kronk.engine.protocol import SamplingParams
from kronk.serving.sampling import (
    FIELDS,
    GGUF_KEYS,
    ModelSampling,
    catalog_entry,
    gguf_sampling,
    model_sampling,
    resolve_sampling,
    served_sampling,
)
from kronk.settings import SamplingDefaults, SamplingValues, Settings, load_settings

MSG = [{"role": "user", "content": "hi"}]


def chat(**fields) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, **fields})


def meta_of(values: dict[str, str]):
    """A GGUF metadata reader (LlamaModel.meta) over ``{key: text}``."""
    return values.get


class FakeEngine:
    """What model_sampling reads of an engine: its model's metadata."""

    def __init__(self, meta: dict[str, str]):
        self.model = type("Model", (), {"meta": staticmethod(meta_of(meta))})()


# ---------------------------------------------------------------------- precedence, per field


def test_each_field_takes_settings_then_gguf_then_catalog_then_the_default() -> None:
    server = SamplingDefaults(top_k=7)  # the user set top_k for every model
    gguf = {"top_k": 50, "temperature": 0.5, "top_p": 0.7}
    catalog = SamplingValues(temperature=0.2, top_p=0.9, min_p=0.1)
    r = resolve_sampling(server, gguf, catalog)
    assert r.sources == {"top_k": "settings", "temperature": "gguf", "top_p": "gguf", "min_p": "catalog",
                         "repeat_penalty": "default", "repeat_last_n": "default"}
    p = r.params
    d = SamplingDefaults()
    assert (p.top_k, p.temperature, p.top_p, p.min_p) == (7, 0.5, 0.7, 0.1)
    assert (p.repeat_penalty, p.repeat_last_n) == (d.repeat_penalty, d.repeat_last_n)


def test_nothing_recommended_gives_the_server_defaults() -> None:
    r = resolve_sampling(SamplingDefaults(), {}, None)
    assert set(r.sources.values()) == {"default"}
    d = SamplingDefaults()
    assert {f: getattr(r.params, f) for f in FIELDS} == d.model_dump()


def test_the_server_defaults_are_in_llama_cpp_and_ollamas_range() -> None:
    d = SamplingDefaults()
    assert 0.7 <= d.temperature <= 0.8 and d.top_k == 40 and 0.9 <= d.top_p <= 0.95 and d.min_p == 0.05
    assert 1.0 <= d.repeat_penalty <= 1.1 and d.repeat_last_n == 64


def test_the_card_names_each_value_and_its_source() -> None:
    r = resolve_sampling(SamplingDefaults(), {"temperature": 0.3}, SamplingValues(top_p=0.8))
    card = r.card()
    assert list(card) == list(FIELDS)
    assert card["temperature"] == {"value": 0.3, "source": "gguf"}
    assert card["top_p"] == {"value": 0.8, "source": "catalog"}
    assert card["top_k"] == {"value": 40, "source": "default"}


# ---------------------------------------------------------------------- the GGUF's general.sampling.*


def test_gguf_keys_are_llama_cpps() -> None:
    gguf = pytest.importorskip("gguf")
    k = gguf.Keys.General
    assert GGUF_KEYS == {"temperature": k.SAMPLING_TEMP, "top_k": k.SAMPLING_TOP_K, "top_p": k.SAMPLING_TOP_P,
                         "min_p": k.SAMPLING_MIN_P, "repeat_penalty": k.SAMPLING_PENALTY_REPEAT,
                         "repeat_last_n": k.SAMPLING_PENALTY_LAST_N}


def test_gguf_values_are_read_as_numbers_and_bad_ones_ignored() -> None:
    meta = {"general.sampling.temp": "0.600000", "general.sampling.top_k": "20", "general.sampling.top_p": "1.5",
            "general.sampling.min_p": "lots", "general.sampling.penalty_last_n": "64.000000",
            "general.sampling.penalty_repeat": "1.05"}
    assert gguf_sampling(meta_of(meta)) == {"temperature": 0.6, "top_k": 20, "repeat_last_n": 64,
                                            "repeat_penalty": 1.05}  # top_p out of range, min_p not a number
    assert gguf_sampling(meta_of({"general.sampling.top_k": "2.5"})) == {}
    assert gguf_sampling(None) == {} and gguf_sampling(meta_of({})) == {}


def test_model_sampling_reads_the_engines_gguf_and_the_catalog_entry() -> None:
    entry = Catalog.load().get("smollm2:1.7b")  # its card's temperature 0.2, top_p 0.9
    engine = FakeEngine({"general.sampling.top_p": "0.5"})
    r = model_sampling(SamplingDefaults(), engine, entry)
    assert (r.params.temperature, r.sources["temperature"]) == (0.2, "catalog")
    assert (r.params.top_p, r.sources["top_p"]) == (0.5, "gguf")  # the file's own wins over the catalog's
    assert r.sources["top_k"] == "default"
    assert model_sampling(SamplingDefaults(), object()).sources == dict.fromkeys(FIELDS, "default")
    # as a replica builds it: the user's server setting, then the catalog entry of the model's source
    settings = Settings.from_resolved({"sampling_defaults": {"top_k": 5}})
    served = served_sampling(settings, Catalog.load(), "smollm2:1.7b", None, engine)
    assert (served.params.top_k, served.sources["top_k"]) == (5, "settings")
    assert (served.params.temperature, served.sources["temperature"]) == (0.2, "catalog")


# ---------------------------------------------------------------------- the catalog entry of a served model


def test_catalog_entry_by_manifest_source_or_hub_file() -> None:
    catalog = Catalog.load()
    man = type("Manifest", (), {"name": "smollm2:135m", "hf_repo": None, "primary": "x.gguf"})()
    assert catalog_entry(catalog, "chat", man).name == "smollm2:135m"  # served as an alias of a pulled model
    assert catalog_entry(catalog, "qwen3:8b").name == "qwen3:8b"
    hub = catalog.get("llama3.2:1b")
    pulled = type("Manifest", (), {"name": "hf.co/x:Q4_K_M", "hf_repo": hub.hf_repo, "primary": hub.primary})()
    assert catalog_entry(catalog, "hf.co/x:Q4_K_M", pulled).name == "llama3.2:1b"
    assert catalog_entry(catalog, "/models/mine.gguf") is None
    assert catalog_entry(catalog, "hf.co/someone/else:Q4_K_M") is None


# ---------------------------------------------------------------------- the setting


def test_the_setting_records_which_values_the_user_set(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().sampling_defaults == SamplingDefaults()
    assert Settings().to_args()["sampling_defaults"] == {}  # nothing set: every model's own values apply
    flag = load_settings({"sampling_defaults": '{"top_k": 20, "temperature": 0.3}'})  # a flag's JSON
    assert (flag.sampling_defaults.top_k, flag.sampling_defaults.temperature) == (20, 0.3)
    monkeypatch.setenv("KRONK_SAMPLING_DEFAULTS__TEMPERATURE", "0.5")  # one field from the environment
    s = load_settings()
    assert s.sampling_defaults.temperature == 0.5 and s.sampling_defaults.model_fields_set == {"temperature"}
    again = Settings.from_resolved(s.to_args())  # as a replica rebuilds it
    assert again.sampling_defaults.model_fields_set == {"temperature"}
    assert resolve_sampling(again.sampling_defaults, {"temperature": 0.9}, None).sources["temperature"] == "settings"
    with pytest.raises(ValueError):
        Settings(sampling_defaults={"top_p": 0})


# ---------------------------------------------------------------------- the request's own values


def test_a_request_value_wins_and_unset_fields_take_the_models_defaults() -> None:
    defaults = SamplingParams(temperature=0.2, top_k=11, top_p=0.9, min_p=0.01, repeat_penalty=1.1,
                              repeat_last_n=32)
    s = sampling_from(chat(top_k=3, seed=5), None, defaults)
    assert (s.temperature, s.top_k, s.top_p, s.min_p, s.repeat_penalty, s.repeat_last_n, s.seed) == (
        0.2, 3, 0.9, 0.01, 1.1, 32, 5)
    # through generation_request, as the chat and completions handlers call it
    g = generation_request(chat(), [1, 2], None, "r", defaults=defaults)
    assert g.sampling.temperature == 0.2 and g.sampling.repeat_penalty == 1.1
    assert sampling_from(chat(), None).temperature == SamplingParams().temperature  # no defaults: the engine's


def test_temperature_zero_stays_greedy_without_a_default_penalty() -> None:
    defaults = ModelSampling.of(SamplingParams(temperature=0.7, repeat_penalty=1.1)).params
    s = sampling_from(chat(temperature=0), None, defaults)
    assert s.greedy and s.repeat_penalty == 1.0  # the model's own argmax, as every temperature-0 client expects
    assert sampling_from(chat(temperature=0, repeat_penalty=1.3), None, defaults).repeat_penalty == 1.3


# ---------------------------------------------------------------------- the repetition guard's field


@pytest.mark.parametrize(("fields", "grammar", "guarded"), [
    ({}, None, True),  # plain text: on by default
    ({}, "root ::= x", True),
    ({"repetition_guard": False}, None, False),
    ({"repetition_guard": False}, "root ::= x", False),
    ({"ignore_eos": True}, None, False),  # exactly max_tokens tokens, as benchmarks ask
    ({"ignore_eos": True}, "root ::= x", True),
    ({"ignore_eos": True, "repetition_guard": True}, None, True),
])
def test_the_guard_is_on_unless_the_request_turns_it_off(fields: dict, grammar: str | None, guarded: bool) -> None:
    req = chat(**fields)
    assert repetition_guard(req, grammar) is guarded
    assert generation_request(req, [1], grammar, "r").guarded is guarded


def test_repetition_guard_must_be_a_boolean() -> None:
    with pytest.raises(ValueError):
        chat(repetition_guard="sometimes")


# ---------------------------------------------------------------------- kronk model show


def test_model_show_prints_each_default_of_a_served_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from kronk.cli import models as cli_models

    card = {"id": "smollm2:135m", "context_length": 2048,
            "sampling_defaults": resolve_sampling(SamplingDefaults(), {}, SamplingValues(temperature=0.2)).card()}

    class Ops:
        def get_model(self, name: str) -> dict:
            return {"name": name, "family": "smollm2"}

        def served(self) -> dict:
            return {"smollm2:135m": card}

    monkeypatch.setattr(cli_models, "_ops", lambda params: Ops())
    out = CliRunner().invoke(cli_models.model, ["show", "smollm2:135m"]).output
    assert "sampling temperature   0.2 (catalog)" in out and "sampling top_k         40 (default)" in out, out
    shown = CliRunner().invoke(cli_models.model, ["show", "smollm2:135m", "--json"]).output
    assert '"sampling_defaults"' in shown
