#!/usr/bin/env python3
"""Generate the RayService's ``serveConfigV2`` from ``serve_config.yaml``.

``serve_config.yaml`` is the one place the served models are configured. For
Kubernetes each profile in ``k8s/serve-profiles.yaml`` adjusts it (the proxy listens
on every interface of every node; per-model resources and autoscaling for CPU or GPU
workers) and names the file that carries the result:

* a ``*.patch.yaml`` output is written whole, as a kustomize JSON patch that
  replaces ``/spec/serveConfigV2`` (the gpu overlay);
* any other output is a hand-written manifest whose ``serveConfigV2: |`` block is
  replaced in place (the base RayService); the rest of the file is left as it is.

Usage::

    python scripts/gen_rayservice.py           # rewrite what is out of date
    python scripts/gen_rayservice.py --check   # exit 1 if anything is out of date (tests, CI)
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILES_FILE = "serve-profiles.yaml"
BUILDER = "deployments.app:build_app"
KEY_RE = re.compile(r"^(?P<indent>[ ]*)serveConfigV2:[ ]*\|[-+]?[ ]*$")
GENERATED_BY = "scripts/gen_rayservice.py"


class GenerateError(Exception):
    pass


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``; nested mappings are merged, anything else replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_profiles(root: Path = REPO) -> dict[str, dict[str, Any]]:
    data = yaml.safe_load((root / "k8s" / PROFILES_FILE).read_text()) or {}
    profiles = data.get("profiles")
    if not isinstance(profiles, dict) or not profiles:
        raise GenerateError(f"k8s/{PROFILES_FILE} must have a `profiles` mapping")
    for name, p in profiles.items():
        unknown = set(p) - {"output", "serve", "models", "model_overrides"}
        if unknown or not p.get("output"):
            raise GenerateError(f"profile {name}: needs `output`; unknown keys: {sorted(unknown)}")
    return profiles


def _models(args: dict[str, Any]) -> list[dict[str, Any]]:
    from kronk.settings import DEFAULT_MODEL

    models = args.get("models", [DEFAULT_MODEL])
    if isinstance(models, str):
        models = [s for s in re.split(r"[,\s]+", models) if s]
    return [{"name": m} if isinstance(m, str) else dict(m) for m in models]


def serve_config_v2(serve_config: dict[str, Any], profile: dict[str, Any]) -> dict[str, Any]:
    """serve_config.yaml adjusted by one profile, as a Serve config (``ServeDeploySchema``) mapping."""
    from kronk.settings import ModelConfig

    config = _merge(serve_config, profile.get("serve") or {})
    overrides: dict[str, dict[str, Any]] = profile.get("model_overrides") or {}
    seen: set[str] = set()
    for app in config.get("applications") or []:
        if app.get("import_path") != BUILDER:
            continue
        args = app.setdefault("args", {})
        models = []
        for m in _models(args):
            m.update(profile.get("models") or {})
            m.update(overrides.get(m["name"], {}))
            seen.add(m["name"])
            ModelConfig(**m)  # a typo in a profile fails here, not in the cluster
            models.append(m)
        args["models"] = models
    missing = set(overrides) - seen
    if missing:
        raise GenerateError(f"model_overrides name models that serve_config.yaml does not serve: {sorted(missing)}")
    return config


def config_text(config: dict[str, Any], profile_name: str) -> str:
    header = (f"# Generated from serve_config.yaml (profile {profile_name} in k8s/{PROFILES_FILE}) by\n"
              f"# `python {GENERATED_BY}`: edit those, not this.\n")
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=1000)


def _block(text: str, indent: int) -> str:
    pad = " " * indent
    return "".join(pad + line if line.strip() else "\n" for line in text.splitlines(keepends=True))


def embed(manifest: str, text: str) -> str:
    """``manifest`` with its ``serveConfigV2: |`` block's content replaced by ``text``."""
    lines = manifest.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if KEY_RE.match(line)]
    if len(starts) != 1:
        raise GenerateError(f"expected one `serveConfigV2: |` block, found {len(starts)}")
    start = starts[0]
    key_indent = len(KEY_RE.match(lines[start]).group("indent"))  # type: ignore[union-attr]
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip(" ")) > key_indent):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():  # blank lines after the block stay outside it
        end -= 1
    key = " " * key_indent + "serveConfigV2: |\n"
    return "".join([*lines[:start], key, _block(text, key_indent + 2), *lines[end:]])


def patch(text: str, profile_name: str) -> str:
    """A kustomize JSON 6902 patch that sets the RayService's serveConfigV2 to ``text``."""
    return (f"# Generated from serve_config.yaml (profile {profile_name} in k8s/{PROFILES_FILE}) by\n"
            f"# `python {GENERATED_BY}`: edit those, not this.\n"
            "- op: replace\n"
            "  path: /spec/serveConfigV2\n"
            "  value: |\n" + _block(text, 4))


def render(root: Path = REPO) -> dict[Path, str]:
    """Every generated file's path -> the content it should have."""
    serve_config = yaml.safe_load((root / "serve_config.yaml").read_text())
    out: dict[Path, str] = {}
    for name, profile in load_profiles(root).items():
        text = config_text(serve_config_v2(serve_config, profile), name)
        path = root / "k8s" / profile["output"]
        if path.name.endswith(".patch.yaml"):
            out[path] = patch(text, name)
        else:
            if not path.exists():
                raise GenerateError(f"{path} does not exist (it must hold a `serveConfigV2: |` block)")
            out[path] = embed(out.get(path) or path.read_text(), text)
    return out


def stale(root: Path = REPO) -> list[Path]:
    """The generated files whose content on disk differs from what they should hold."""
    return [p for p, text in render(root).items() if not p.exists() or p.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only check; exit 1 if a generated file is out of date")
    ap.add_argument("--root", type=Path, default=REPO, help="the repository root (default: this checkout)")
    a = ap.parse_args(argv)
    root = a.root.resolve()
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        files = render(root)
    except (GenerateError, OSError, yaml.YAMLError, ValueError) as e:
        print(f"gen_rayservice: {e}", file=sys.stderr)
        return 2
    changed = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
    for p in changed:
        rel = p.relative_to(root)
        if a.check:
            print(f"{rel} is out of date with serve_config.yaml / k8s/{PROFILES_FILE}: "
                  f"run `python {GENERATED_BY}`", file=sys.stderr)
        else:
            p.write_text(files[p])
            print(f"wrote {rel}")
    if a.check:
        return 1 if changed else 0
    if not changed:
        print("serveConfigV2 is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
