"""A model's sampling defaults: what the sampling fields a request leaves unset take.

Resolved once, where the model's service is built (:class:`kronk.serving.service.ModelService`), per field:

1. a value the user set in the server's ``sampling_defaults`` setting (a flag, env var or config key: as
   llama.cpp's own flags win over a GGUF's values);
2. the GGUF's recommended value (``general.sampling.*``, see :data:`GGUF_KEYS`);
3. the model's catalog entry (``sampling:`` in kronk/catalog/catalog.yaml, from its model card);
4. the server's default (``sampling_defaults`` at kronk's defaults: llama.cpp's and Ollama's range).

A request's own value always wins (kronk.api.generation.sampling_from). ``general.sampling.sequence`` (the
sampler order), mirostat and XTC are not read: kronk's sampler chain has one order and neither sampler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from kronk.engine.protocol import SamplingParams
from kronk.settings import SamplingDefaults, SamplingValues, Settings

if TYPE_CHECKING:
    from kronk.catalog.catalog import Catalog, CatalogEntry

log = logging.getLogger("kronk.serving")

# The defaulted fields, in the order a model card shows them.
FIELDS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n")
# Their keys in a GGUF's metadata (gguf-py's Keys.General.SAMPLING_*, which llama.cpp reads too).
GGUF_KEYS = {
    "temperature": "general.sampling.temp",
    "top_k": "general.sampling.top_k",
    "top_p": "general.sampling.top_p",
    "min_p": "general.sampling.min_p",
    "repeat_penalty": "general.sampling.penalty_repeat",
    "repeat_last_n": "general.sampling.penalty_last_n",
}
INT_FIELDS = ("top_k", "repeat_last_n")

# Where a default came from (the model card's ``source``).
SETTINGS, GGUF, CATALOG, DEFAULT = "settings", "gguf", "catalog", "default"


@dataclass(frozen=True)
class ModelSampling:
    """One model's sampling defaults and where each came from."""

    params: SamplingParams  # the defaults (their FIELDS; the rest as SamplingParams has them)
    sources: Mapping[str, str]  # field -> SETTINGS | GGUF | CATALOG | DEFAULT

    @classmethod
    def of(cls, params: SamplingParams, source: str = DEFAULT) -> ModelSampling:
        """Fixed defaults (benchmarks, tests: e.g. SamplingParams() for the engine's own)."""
        return cls(params, dict.fromkeys(FIELDS, source))

    def card(self) -> dict[str, dict[str, Any]]:
        """``{field: {"value", "source"}}``: the model card's ``sampling_defaults``."""
        return {f: {"value": getattr(self.params, f), "source": self.sources[f]} for f in FIELDS}


def gguf_sampling(meta: Callable[[str], str | None] | None) -> dict[str, float | int]:
    """The GGUF's recommended values (``meta``: kronk.engine.model.LlamaModel.meta); one that is not a number
    in the request's range is left out (logged)."""
    out: dict[str, float | int] = {}
    for field, key in GGUF_KEYS.items():
        raw = meta(key) if meta is not None else None
        if raw is None:
            continue
        value = _number(field, raw)
        if value is None:
            log.warning("ignoring the GGUF's %s = %r: not a valid %s", key, raw, field)
        else:
            out[field] = value
    return out


def _number(field: str, raw: str) -> float | int | None:
    try:
        num = float(raw)
        value: float | int = int(num) if field in INT_FIELDS and num.is_integer() else num
        SamplingValues.model_validate({field: value})
    except (ValueError, ValidationError):
        return None
    return value


def resolve_sampling(server: SamplingDefaults, gguf: Mapping[str, float | int],
                     catalog: SamplingValues | None) -> ModelSampling:
    """Per field: the user's server setting, else the GGUF's, else the catalog's, else the server default."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for f in FIELDS:
        recommended = getattr(catalog, f, None) if catalog is not None else None
        if f in server.model_fields_set:
            values[f], sources[f] = getattr(server, f), SETTINGS
        elif f in gguf:
            values[f], sources[f] = gguf[f], GGUF
        elif recommended is not None:
            values[f], sources[f] = recommended, CATALOG
        else:
            values[f], sources[f] = getattr(server, f), DEFAULT
    return ModelSampling(SamplingParams(**values), sources)


def engine_meta(engine: Any) -> Callable[[str], str | None] | None:
    """The engine's GGUF metadata reader (LlamaEngine.model.meta), if it has one."""
    return getattr(getattr(engine, "model", None), "meta", None)


def catalog_entry(catalog: Catalog, source: str, manifest: Any | None = None) -> CatalogEntry | None:
    """The catalog entry of a served model: its store manifest's name, else its source (a catalog name), else
    the entry whose file the manifest's Hugging Face repo and file are (an ``hf.co/...`` pull); None for a
    local GGUF path or a model the catalog does not know."""
    for name in (getattr(manifest, "name", None), source):
        if name and name in catalog:
            return catalog.get(name)
    repo, primary = getattr(manifest, "hf_repo", None), getattr(manifest, "primary", None)
    return catalog.find_file(repo, primary) if repo and primary else None


def model_sampling(server: SamplingDefaults, engine: Any, entry: CatalogEntry | None = None) -> ModelSampling:
    """A served model's defaults: the server's ``sampling_defaults``, the engine's GGUF, its catalog entry."""
    return resolve_sampling(server, gguf_sampling(engine_meta(engine)), entry.sampling if entry else None)


def describe(sampling: ModelSampling) -> str:
    """``temperature 0.2 (catalog), top_k 40 (default), ...``: for logs and the CLI."""
    return ", ".join(f"{f} {getattr(sampling.params, f)} ({sampling.sources[f]})" for f in FIELDS)


def served_sampling(settings: Settings, catalog: Catalog, source: str, manifest: Any | None,
                    engine: Any) -> ModelSampling:
    """The defaults of a model a replica (or a pool) serves: ``settings.sampling_defaults``, the engine's GGUF,
    and the catalog entry of its ``source`` / store ``manifest`` (:func:`catalog_entry`)."""
    return model_sampling(settings.sampling_defaults, engine, catalog_entry(catalog, source, manifest))
