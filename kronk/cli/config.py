"""``kronk config show``: the effective settings and where each value came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kronk.cli.common import SERVER_FIELDS, build_settings, config_option, overrides_of, print_json, settings_options
from kronk.settings import DERIVED_DEFAULTS, config_file_path, env_name, flag_name, setting_sources


@click.group()
def config() -> None:
    """Inspect kronk's settings."""


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "{}"
    if isinstance(value, list):
        return ", ".join(str(v.get("name", v)) if isinstance(v, dict) else str(v) for v in value) or "[]"
    return "-" if value is None else str(value)


@config.command("show")
@settings_options(SERVER_FIELDS)
@config_option
@click.option("--model", "-m", "model", multiple=True, metavar="NAME", help="As for `kronk server start`.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def show(config: Path | None, model: tuple[str, ...], as_json: bool, **params: Any) -> None:
    """Every setting's effective value and its source: flag > env (KRONK_*) > config file > default.

    Per-model fields show the server-wide value every model inherits unless its own entry sets the field
    (a catalog model's context length and recommended KV cache type apply where its entry sets none).

    Takes the same flags as `kronk server start`, so you can see what a start would use.
    Secrets (the Hugging Face token, API keys) are always masked.
    """
    overrides = overrides_of(params)
    if model:
        overrides["models"] = list(model)
    settings = build_settings(overrides, config)
    sources = setting_sources(overrides, config)
    values = settings.public_dict()  # secrets masked
    path = config_file_path(config, overrides.get("home"))
    rows = []
    for name, value in values.items():
        if value is None and name in DERIVED_DEFAULTS:  # None stands for a value derived elsewhere: say which
            if name == "models_dir":
                value = str(settings.models_path)
            sources[name] = sources[name] + f" ({DERIVED_DEFAULTS[name]})"
        rows.append({"setting": name, "value": value, "source": sources[name],
                     "flag": flag_name(name) if name in SERVER_FIELDS else ("--model" if name == "models" else None),
                     "env": env_name(name)})
    if as_json:
        print_json({"config_file": str(path) if path else None, "settings": rows})
        return
    click.echo(f"config file: {path or 'none'}")
    width = max(len(r["setting"]) for r in rows)
    vwidth = min(max(len(_shown(r["value"])) for r in rows), 40)
    for r in rows:
        click.echo(f"{r['setting']:{width}}  {_shown(r['value']):{vwidth}}  {r['source']}")
