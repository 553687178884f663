"""Shared CLI pieces: settings flags generated from Settings, loading settings, errors, the server URL."""

from __future__ import annotations

import json
import os
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal, NoReturn

import annotated_types
import click
from pydantic import ValidationError

from kronk.settings import (
    SECRET_FIELDS,
    Settings,
    config_file_path,
    env_name,
    flag_name,
    load_settings,
    setting_sources,
)

# Every setting a flag can set (secrets only come from env or the config file; models from --model).
SERVER_FIELDS = tuple(f for f in Settings.model_fields if f not in (*SECRET_FIELDS, "models"))
# What commands that only touch the model store need.
STORE_FIELDS = ("home", "models_dir", "hf_endpoint")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CliError(click.ClickException):
    """A one-line error (``Error: ...`` on stderr) with an exit code: 2 for bad input, 1 for failures."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE):
        super().__init__(message)
        self.exit_code = exit_code


def fail(message: str, exit_code: int = EXIT_USAGE) -> NoReturn:
    raise CliError(message, exit_code)


def err(message: str) -> None:
    """A status line for people (stderr, so stdout stays machine-readable)."""
    click.echo(message, err=True)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


# ---------------------------------------------------------------------- flags from Settings


def _unwrap(annotation: Any) -> Any:
    """``int | None`` -> ``int``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def _bounds(metadata: Iterable[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            out["min"] = m.ge
        elif isinstance(m, annotated_types.Gt):
            out["min"], out["min_open"] = m.gt, True
        elif isinstance(m, annotated_types.Le):
            out["max"] = m.le
        elif isinstance(m, annotated_types.Lt):
            out["max"], out["max_open"] = m.lt, True
    return out


class _IntRange(click.IntRange):
    name = "integer"


class _FloatRange(click.FloatRange):
    name = "number"


def click_type(field: str) -> click.ParamType:
    info = Settings.model_fields[field]
    ann = _unwrap(info.annotation)
    if typing.get_origin(ann) is Literal:
        return click.Choice([str(a) for a in typing.get_args(ann)])
    bounds = _bounds(info.metadata)
    if ann is int:
        return _IntRange(**bounds) if bounds else click.INT
    if ann is float:
        return _FloatRange(**bounds) if bounds else click.FLOAT
    if ann is bool:
        return click.BOOL
    if ann is Path:
        return click.Path(path_type=Path, file_okay=False)
    return click.STRING


def _default_text(field: str) -> str | None:
    info = Settings.model_fields[field]
    if field == "home":
        return "$KRONK_HOME or ~/.kronk"
    if info.default_factory is not None or info.default is None:
        return None
    return str(info.default)


def settings_options(fields: Iterable[str]) -> Callable[[Callable], Callable]:
    """Click options for Settings fields: ``--models-dir`` sets ``models_dir`` (env KRONK_MODELS_DIR).

    Every option defaults to None, so only flags the user gave override env and the config file.
    """
    fields = list(fields)

    def decorate(f: Callable) -> Callable:
        for name in reversed(fields):
            info = Settings.model_fields[name]
            help_ = (info.description or "").rstrip(".")
            default = _default_text(name)
            help_ += f" [env {env_name(name)}" + (f"; default: {default}]" if default else "]")
            f = click.option(flag_name(name), name, type=click_type(name), default=None, help=help_)(f)
        return f

    return decorate


def config_option(f: Callable) -> Callable:
    return click.option(
        "--config", "config", type=click.Path(dir_okay=False, path_type=Path), default=None,
        help="YAML config file [env KRONK_CONFIG; default: <home>/config.yaml].",
    )(f)


def url_option(f: Callable) -> Callable:
    return click.option(
        "--url", "url", envvar="KRONK_URL", default=None, metavar="URL",
        help="The kronk server to talk to [env KRONK_URL; default: the server started from this home, "
        "else http://<host>:<port> from the settings].",
    )(f)


# ---------------------------------------------------------------------- settings


def overrides_of(params: dict[str, Any], fields: Iterable[str] = SERVER_FIELDS) -> dict[str, Any]:
    return {f: params[f] for f in fields if params.get(f) is not None}


def check_config(config: Path | None, home: Path | None = None) -> Path | None:
    path = config_file_path(config, home)
    if path is not None and not path.is_file():
        how = "--config" if config else "KRONK_CONFIG"
        fail(f"config file {path} does not exist; fix {how} or create the file")
    return path


def build_settings(overrides: dict[str, Any], config: Path | None = None) -> Settings:
    """load_settings with bad values (from any source) turned into one clear line and exit 2."""
    check_config(config, overrides.get("home"))
    try:
        return load_settings(overrides, config)
    except ValidationError as e:
        try:
            sources = setting_sources(overrides, config)
        except ValueError:
            sources = {}
        parts = []
        for error in e.errors():
            field = str(error["loc"][0]) if error["loc"] else "settings"
            where = sources.get(field, "")
            value = error.get("input")
            shown = "" if field in SECRET_FIELDS or isinstance(value, dict) else f" {value!r}"
            parts.append(f"invalid value{shown} for {field}" + (f" (from {where})" if where else "")
                         + f": {error['msg']}")
        fail("; ".join(parts) + ". Fix the flag, environment variable or config file named.")
    except ValueError as e:  # an unreadable config file, or an env value that is not valid JSON
        hint = ("Fix the config file or point --config elsewhere" if str(e).startswith("config file")
                else "Fix that environment variable (lists and objects are JSON) or the config file")
        fail(f"{e}. {hint}.")


def ensure_dir(path: Path, what: str, flag: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"cannot create the {what} {path}: {e.strerror or e}; choose a writable folder with {flag}")
    if not os.access(path, os.W_OK):
        fail(f"the {what} {path} is not writable; choose a writable folder with {flag}")


def ensure_dirs(settings: Settings) -> None:
    ensure_dir(settings.home, "home folder", "--home")
    ensure_dir(settings.models_path, "models folder", "--models-dir")


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
