"""Model references: what a user may type to name a model, and how files are picked.

Accepted forms:

* a catalog name: ``gemma3-270m``, ``llama3.2:3b``
* a file in a Hugging Face repo: ``hf.co/<org>/<repo>/<path/file.gguf>``
  (``huggingface.co/`` and ``https://`` prefixes, ``/resolve/<rev>/`` and
  ``/blob/<rev>/`` URLs are accepted too)
* a quantization in a repo: ``hf.co/<org>/<repo>:<QUANT>`` (case-insensitive, like
  Ollama); ``hf.co/<org>/<repo>`` alone picks Q4_K_M (or the first GGUF)
* a local GGUF file: ``/models/x.gguf``, ``./x.gguf``, ``~/x.gguf``
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from kronk.catalog.catalog import split_parts
from kronk.store.errors import InvalidRef, RepoNotFound

RefKind = Literal["catalog", "hf", "local"]

_HF_PREFIXES = ("hf.co/", "huggingface.co/", "www.huggingface.co/")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_QUANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CATALOG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
_HF_FORMS = "hf.co/<org>/<repo>/<file.gguf> or hf.co/<org>/<repo>:<QUANT>"
DEFAULT_QUANTS = ("Q4_K_M", "Q4_0", "Q8_0")


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference. ``name`` is the model's name in the store (and its folder's source)."""

    kind: RefKind
    raw: str
    name: str
    repo: str | None = None
    file: str | None = None
    quant: str | None = None
    revision: str = "main"
    path: Path | None = None


def parse_ref(ref: str) -> ModelRef:
    """Parse a model reference; raise :class:`InvalidRef` (a ValueError) with a usable message."""
    if not isinstance(ref, str) or not ref.strip():
        raise InvalidRef("empty model reference: give a catalog name, " + _HF_FORMS + ", or a .gguf path")
    raw = ref.strip()
    bare = re.sub(r"^https?://", "", raw, flags=re.IGNORECASE)
    if bare.lower().startswith(_HF_PREFIXES):
        return _parse_hf(raw, bare.split("/", 1)[1])
    if raw.lower().endswith(".gguf"):
        path = Path(raw).expanduser()
        return ModelRef(kind="local", raw=raw, name=str(path.absolute()), path=path.absolute())
    if raw.startswith(("/", "./", "../", "~", "\\")) or raw.startswith("."):
        raise InvalidRef(f"local model path {raw!r} must point to a .gguf file")
    if "/" in raw:
        raise InvalidRef(
            f"model reference {raw!r} looks like a Hugging Face repo: write it as hf.co/{raw}/<file.gguf> "
            f"or hf.co/{raw}:<QUANT> (e.g. hf.co/{raw.split(':')[0]}:Q4_K_M)"
        )
    if not _CATALOG_NAME.match(raw):
        raise InvalidRef(
            f"invalid model name {raw!r}: catalog names use letters, digits, '.', '_', '-' and ':' "
            "(see `kronk catalog`)"
        )
    return ModelRef(kind="catalog", raw=raw, name=raw)


def _parse_hf(raw: str, rest: str) -> ModelRef:
    rest = rest.split("?", 1)[0].split("#", 1)[0].strip("/")
    parts = rest.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise InvalidRef(f"invalid Hugging Face reference {raw!r}: use {_HF_FORMS}")
    org, repo_part, tail = parts[0], parts[1], parts[2:]
    quant: str | None = None
    if ":" in repo_part:
        if tail:
            raise InvalidRef(f"invalid Hugging Face reference {raw!r}: give a file or a :QUANT, not both")
        repo_part, quant = repo_part.split(":", 1)
        if not quant or not _QUANT.match(quant):
            raise InvalidRef(f"invalid quantization in {raw!r}: expected e.g. :Q4_K_M")
    for seg in (org, repo_part):
        if not _SEGMENT.match(seg) or ".." in seg or "--" in seg:
            raise InvalidRef(f"invalid Hugging Face repo name {org}/{repo_part!s} in {raw!r}")
    repo = f"{org}/{repo_part}"
    revision = "main"
    if len(tail) >= 2 and tail[0] in ("resolve", "blob"):
        revision, tail = tail[1], tail[2:]
    if tail:
        file = "/".join(tail)
        if any(p in ("", ".", "..") for p in tail):
            raise InvalidRef(f"invalid file path {file!r} in {raw!r}")
        if not file.lower().endswith(".gguf"):
            raise InvalidRef(f"{raw!r} does not name a .gguf file: use {_HF_FORMS}")
        return ModelRef(kind="hf", raw=raw, name=f"hf.co/{repo}/{file}", repo=repo, file=file, revision=revision)
    if quant is None or quant.lower() == "latest":
        return ModelRef(kind="hf", raw=raw, name=f"hf.co/{repo}", repo=repo, revision=revision)
    return ModelRef(
        kind="hf", raw=raw, name=f"hf.co/{repo}:{quant.upper()}", repo=repo, quant=quant.upper(), revision=revision
    )


def store_dirname(name: str) -> str:
    """The folder name of a model in the store: readable, one path segment, no surprises."""
    s = name.replace("/", "--").replace(":", "--")
    s = re.sub(r"[^A-Za-z0-9._-]", "_", s).strip(".")
    if not s:
        raise InvalidRef(f"model name {name!r} cannot be stored")
    return s


# --------------------------------------------------------------------------- file choice


def quant_of(filename: str) -> str | None:
    """The quantization tag at the end of a GGUF file name (``Model-Q4_K_M.gguf`` -> ``Q4_K_M``)."""
    base = PurePosixPath(filename).name
    if not base.lower().endswith(".gguf"):
        return None
    stem = _SPLIT.sub(".gguf", base)[: -len(".gguf")]
    tag = re.split(r"[-.]", stem)[-1]
    if tag and (re.search(r"\d", tag) or tag.upper() in ("F16", "BF16", "F32")):
        return tag.upper()
    return None


def _is_model_gguf(path: str) -> bool:
    base = PurePosixPath(path).name.lower()
    return base.endswith(".gguf") and "mmproj" not in base


def group_files(paths: list[str], first: str) -> list[str]:
    """``first`` plus, when it is part 1 of a split GGUF, all its sibling parts in order."""
    sp = split_parts(first)
    if not sp:
        return [first]
    prefix = first[: _SPLIT.search(first).start()]  # type: ignore[union-attr]
    count = sp[1]
    wanted = [f"{prefix}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
    lower = {p.lower(): p for p in paths}
    missing = [w for w in wanted if w.lower() not in lower]
    if missing:
        raise RepoNotFound(f"split GGUF {first} is missing parts on the hub: {', '.join(missing)}")
    return [lower[w.lower()] for w in wanted]


def pick_quant(paths: list[str], repo: str, quant: str | None) -> list[str]:
    """The files (all parts of a split GGUF) of ``quant`` in a repo's file list."""
    ggufs = sorted(p for p in paths if _is_model_gguf(p))
    if not ggufs:
        raise RepoNotFound(f"hf.co/{repo} holds no .gguf files")
    firsts = [p for p in ggufs if (split_parts(p) or (1, 1))[0] == 1]
    if quant is None:
        for q in DEFAULT_QUANTS:
            hit = [p for p in firsts if (quant_of(p) or "") == q]
            if hit:
                return group_files(paths, hit[0])
        return group_files(paths, firsts[0])
    hits = [p for p in firsts if (quant_of(p) or "").upper() == quant.upper()]
    if not hits:
        available = sorted({q for p in firsts if (q := quant_of(p))})
        raise RepoNotFound(
            f"hf.co/{repo} has no {quant} GGUF; available quantizations: "
            + (", ".join(available) if available else "none recognised, name a file instead")
        )
    hits.sort(key=lambda p: (p.count("/"), len(p)))  # prefer top-level, plainest name
    return group_files(paths, hits[0])
