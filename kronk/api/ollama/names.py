"""Model names between Ollama's clients and kronk.

kronk's catalog names are Ollama-like (``smollm2:135m``, ``gemma3-270m``); Ollama's clients add ``:latest`` to a
name without a tag and may send either spelling. So a name is looked up as sent, then without ``:latest`` (or,
sent without a tag, with it); kronk's names are listed with ``:latest`` where they have no tag, as Ollama lists
its own. A name kronk does not have is Ollama's 404: ``model "x" not found, try pulling it first``.
"""

from __future__ import annotations

from collections.abc import Iterable

from kronk.api.http import installed_models, offline_models
from kronk.errors import ModelNotFound
from kronk.serving.backend import Backend

LATEST = ":latest"


def _has_tag(name: str) -> bool:
    return ":" in name.rsplit("/", 1)[-1]


def ollama_name(name: str) -> str:
    """kronk's name as Ollama lists it: with ``:latest`` when it has no tag."""
    return name if _has_tag(name) else name + LATEST


def kronk_names(name: str) -> list[str]:
    """The kronk names an Ollama name may mean, in order."""
    if name.endswith(LATEST) and _has_tag(name):
        return [name, name[: -len(LATEST)]]
    return [name] if _has_tag(name) else [name, name + LATEST]


def not_found(name: str) -> ModelNotFound:
    return ModelNotFound(f'model "{name}" not found, try pulling it first', param="model")


def pick(name: str, known: Iterable[str]) -> str | None:
    have = set(known)
    return next((n for n in kronk_names(name) if n in have), None)


async def known_models(backend: Backend) -> list[str]:
    """Every name a request may use: the served models, the installed ones, and with the pool on the catalog
    models that installed packages ship."""
    names = list(await backend.model_ids()) + [m["name"] for m in await installed_models(backend)]
    if getattr(backend, "on_demand", False):
        names += await offline_models(backend)
    return names


async def resolve(backend: Backend, name: str) -> str:
    """The kronk model an Ollama name means (else Ollama's 404)."""
    found = pick(name, await known_models(backend))
    if found is None:
        raise not_found(name)
    return found
