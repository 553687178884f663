"""One Settings object for the whole server.

Precedence, highest first: explicit values (CLI flags, ``build_app`` args) >
``KRONK_*`` environment variables > the YAML config file > defaults. Every
setting has one name in all three places: ``--models-dir`` / ``KRONK_MODELS_DIR``
/ ``models_dir``. The config file is read in exactly one place:
:func:`read_config_file`.
"""

from __future__ import annotations

import json
import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

KV_CACHE_TYPES = ("f16", "bf16", "f32", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl")
KVCacheType = Literal["f16", "bf16", "f32", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl"]
FlashAttn = Literal["auto", "on", "off"]

DEFAULT_MODEL = "gemma3-270m"

# The config file path in force while a Settings object is being built (see load_settings).
_config_path: ContextVar[Path | None] = ContextVar("kronk_config_path", default=None)


def default_home() -> Path:
    return Path(os.environ.get("KRONK_HOME") or Path.home() / ".kronk").expanduser()


class ModelConfig(BaseModel):
    """One served model. Unset (None) engine fields inherit the server-wide defaults."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The id clients send as `model`.")
    source: str | None = Field(
        default=None,
        description="Where the GGUF comes from: a catalog name, hf.co/<org>/<repo>/<file.gguf>, "
        "hf.co/<org>/<repo>:<QUANT>, or a local .gguf path. Defaults to `name`.",
    )
    parallel: int | None = Field(default=None, ge=1, le=256, description="Sequence slots per replica.")
    ctx_size: int | None = Field(default=None, ge=64, description="Context length of one slot, in tokens.")
    kv_cache_type: KVCacheType | None = Field(default=None, description="KV cache type for K and V.")
    cache_type_k: KVCacheType | None = Field(default=None, description="K cache type (overrides kv_cache_type).")
    cache_type_v: KVCacheType | None = Field(default=None, description="V cache type (overrides kv_cache_type).")
    flash_attn: FlashAttn | None = Field(default=None, description="Flash attention: auto, on or off.")
    gpu_layers: int | None = Field(default=None, description="Layers offloaded to the GPU (-1: all).")
    main_gpu: int | None = Field(default=None, ge=0, description="GPU used for the whole model or scratch.")
    tensor_split: list[float] | None = Field(default=None, description="Fraction of the model per GPU.")
    threads: int | None = Field(default=None, ge=1, description="Decode threads (default: physical cores).")
    threads_batch: int | None = Field(default=None, ge=1, description="Prompt threads (default: threads).")
    batch_size: int | None = Field(default=None, ge=16, description="Tokens per llama_decode call (n_batch).")
    embedding: bool | None = Field(default=None, description="Serve as an embedding model.")
    chat_template: str | None = Field(default=None, description="Jinja chat template overriding GGUF/catalog.")
    batch_invariant: bool | None = Field(
        default=None, description="Temperature-0 output independent of load (default on; off allows "
        "repacked CPU weights).")
    # Ray Serve options
    num_cpus: float | None = Field(default=None, ge=0, description="Ray CPUs per replica.")
    num_gpus: float | None = Field(default=None, ge=0, description="Ray GPUs per replica (fractions allowed).")
    resources: dict[str, float] | None = Field(default=None, description="Custom Ray resources per replica.")
    min_replicas: int | None = Field(default=None, ge=0, description="Autoscaling lower bound.")
    max_replicas: int | None = Field(default=None, ge=1, description="Autoscaling upper bound.")
    initial_replicas: int | None = Field(default=None, ge=0, description="Replicas at start.")
    target_ongoing_requests: float | None = Field(default=None, gt=0, description="Autoscaling target.")
    max_ongoing_requests: int | None = Field(default=None, ge=1, description="Per-replica admission limit.")
    upscale_delay_s: float | None = Field(
        default=None, ge=0, description="Autoscaling: how long load must stay high before adding replicas (3s).")
    downscale_delay_s: float | None = Field(
        default=None, ge=0, description="Autoscaling: how long load must stay low before removing replicas, "
        "including the last one when min_replicas is 0 (60s).")
    look_back_period_s: float | None = Field(
        default=None, gt=0, description="Autoscaling: the window the load is averaged over (Ray Serve's 30s); "
        "load is reported at least twice per window.")

    @property
    def model_source(self) -> str:
        return self.source or self.name


class Settings(BaseSettings):
    """Server-wide settings. Field names are the config keys; flags and env vars derive from them."""

    model_config = SettingsConfigDict(
        env_prefix="KRONK_",
        env_nested_delimiter="__",
        extra="ignore",
        validate_default=True,
    )

    home: Path = Field(default_factory=default_home, description="kronk's home folder (config, logs, models).")
    models_dir: Path | None = Field(default=None, description="Where models are stored (default: <home>/models).")
    host: str = Field(default="127.0.0.1", description="HTTP host to bind.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port.")
    address: str | None = Field(default=None, description="Ray cluster address to join (default: start one).")
    hf_token: SecretStr | None = Field(default=None, description="Hugging Face token (also read from HF_TOKEN).")
    hf_endpoint: str | None = Field(default=None, description="Hugging Face Hub endpoint (also HF_ENDPOINT).")
    # NoDecode: KRONK_API_KEYS may be `k1,k2` as well as a JSON list (decoded in _keys_from_text)
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="API keys required from non-local clients.")
    log_level: str = Field(default="INFO", description="Log level.")
    ingress: Literal["auto", "router"] = Field(
        default="auto", description="auto: with one model (that does not scale to zero) its replicas serve "
        "HTTP themselves; router: always a separate routing ingress.")
    http_front: Literal["auto", "proxy", "replica"] = Field(
        default="auto", description="Who takes HTTP: proxy: Serve's HTTP proxy; replica: the one model's replicas "
        "listen on host:port themselves, Serve's proxy off (one local node, one model, fixed replica count); "
        "auto: replica when `kronk server start` runs such an app on a Ray it starts, else proxy.")
    background_nice: int = Field(
        default=19, ge=0, le=19, description="Nice value of background work, so that it yields the CPU to the "
        "models: Ray's own services on a Ray that `kronk server start` starts, and the model manager's pulls. "
        "0: normal priority.")

    # Defaults for every model (a model's own field wins).
    parallel: int = Field(default=4, ge=1, le=256, description="Sequence slots per replica.")
    ctx_size: int = Field(default=8192, ge=64, description="Context length of one slot, in tokens.")
    kv_cache_type: KVCacheType = Field(default="f16", description="KV cache type for K and V.")
    flash_attn: FlashAttn = Field(default="auto", description="Flash attention: auto, on or off.")
    gpu_layers: int = Field(default=-1, description="Layers offloaded to the GPU when one is used (-1: all).")
    threads: int | None = Field(default=None, ge=1, description="Decode threads per replica.")
    batch_size: int = Field(default=512, ge=16, description="Tokens per llama_decode call.")
    min_replicas: int = Field(default=1, ge=0, description="Autoscaling lower bound per model.")
    max_replicas: int = Field(default=1, ge=1, description="Autoscaling upper bound per model.")
    target_ongoing_requests: float | None = Field(
        default=None, gt=0, description="Autoscaling target per replica (default: the model's parallel).")
    num_cpus: float = Field(default=1.0, ge=0, description="Ray CPUs per model replica.")
    num_gpus: float = Field(default=0.0, ge=0, description="Ray GPUs per model replica.")

    # NoDecode: KRONK_MODELS may be `a,b` as well as JSON (decoded in _models_from_names)
    models: Annotated[list[ModelConfig], NoDecode] = Field(
        default_factory=lambda: [ModelConfig(name=DEFAULT_MODEL)], description="Models to serve."
    )

    @field_validator("models", mode="before")
    @classmethod
    def _models_from_names(cls, v: Any) -> Any:
        # `--model a --model b` / KRONK_MODELS=a,b give plain names.
        if isinstance(v, str):
            v = json.loads(v) if v.strip().startswith(("[", "{")) else [s for s in re.split(r"[,\s]+", v) if s]
        if isinstance(v, list):
            return [{"name": m} if isinstance(m, str) else m for m in v]
        return v

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys_from_text(cls, v: Any) -> Any:
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                return json.loads(text)
            return [k for k in re.split(r"[,\s]+", text) if k]
        return v

    @field_validator("home", "models_dir", mode="after")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return None if v is None else Path(os.path.abspath(Path(v).expanduser()))

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if self.hf_token is None:
            tok = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
            if tok:
                self.hf_token = SecretStr(tok)
        if self.hf_endpoint is None and os.environ.get("HF_ENDPOINT"):
            self.hf_endpoint = os.environ["HF_ENDPOINT"]
        names = [m.name for m in self.models]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {', '.join(sorted(dupes))}")
        return self

    @property
    def models_path(self) -> Path:
        return self.models_dir or self.home / "models"

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(name)

    def resolved_model(self, m: ModelConfig | str) -> ModelConfig:
        """The model's config with every inheritable field filled from the server defaults."""
        if isinstance(m, str):
            m = self.model(m)
        inherit = {
            "parallel": self.parallel,
            "ctx_size": self.ctx_size,
            "kv_cache_type": self.kv_cache_type,
            "flash_attn": self.flash_attn,
            "gpu_layers": self.gpu_layers,
            "threads": self.threads,
            "batch_size": self.batch_size,
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "num_cpus": self.num_cpus,
            "num_gpus": self.num_gpus,
        }
        data = m.model_dump()
        for k, v in inherit.items():
            if data.get(k) is None:
                data[k] = v
        data["cache_type_k"] = data["cache_type_k"] or data["kv_cache_type"]
        data["cache_type_v"] = data["cache_type_v"] or data["kv_cache_type"]
        return ModelConfig(**data)

    def public_dict(self) -> dict[str, Any]:
        """Settings as plain data with secrets masked (safe to log or return)."""
        d = self.model_dump(mode="json")
        d["hf_token"] = "********" if self.hf_token else None
        d["api_keys"] = ["********" for _ in self.api_keys]
        return d

    def to_args(self) -> dict[str, Any]:
        """Every explicitly known value, secrets included, for passing to build_app / a Ray actor."""
        d = self.model_dump(mode="json", exclude_none=True)
        if self.hf_token:
            d["hf_token"] = self.hf_token.get_secret_value()
        d["api_keys"] = [k.get_secret_value() for k in self.api_keys]
        return d

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _ConfigFileSource(settings_cls))


class _ConfigFileSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _config_path.get()
        return read_config_file(path) if path else {}


def config_file_path(explicit: str | Path | None = None, home: str | Path | None = None) -> Path | None:
    """The config file in force: --config, else KRONK_CONFIG, else <home>/config.yaml if it exists.

    ``home`` is the home given explicitly (``--home``); default: $KRONK_HOME or ~/.kronk.
    """
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("KRONK_CONFIG"):
        return Path(os.environ["KRONK_CONFIG"]).expanduser()
    p = (Path(home).expanduser() if home else default_home()) / "config.yaml"
    return p if p.exists() else None


def read_config_file(path: Path) -> dict[str, Any]:
    """The only reader of the YAML config file."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as e:
        raise ValueError(f"config file not found: {path}") from e
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of setting names to values")
    return data


def load_settings(overrides: dict[str, Any] | None = None, config: str | Path | None = None) -> Settings:
    """Build Settings: overrides (flags) > KRONK_* env > config file > defaults."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    token = _config_path.set(config_file_path(config, overrides.get("home")))
    try:
        return Settings(**overrides)
    finally:
        _config_path.reset(token)


SECRET_FIELDS = ("hf_token", "api_keys")
# Read from these (non-KRONK) variables when no flag, KRONK_* variable or config key sets them.
FALLBACK_ENV = {"hf_token": ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"), "hf_endpoint": ("HF_ENDPOINT",)}


def flag_name(field: str) -> str:
    """The CLI flag of a setting: ``models_dir`` -> ``--models-dir``."""
    return "--" + field.replace("_", "-")


def env_name(field: str) -> str:
    """The environment variable of a setting: ``models_dir`` -> ``KRONK_MODELS_DIR``."""
    return "KRONK_" + field.upper()


def setting_sources(overrides: dict[str, Any] | None = None, config: str | Path | None = None) -> dict[str, str]:
    """Where each setting's effective value comes from, with the same precedence as load_settings.

    Values: ``flag --x``, ``env KRONK_X`` (or ``HF_TOKEN``...), ``config <path>``, ``default``.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    path = config_file_path(config, overrides.get("home"))
    file_keys = set(read_config_file(path)) if path else set()
    env = {k.lower(): k for k, v in os.environ.items() if v is not None}
    out: dict[str, str] = {}
    for name in Settings.model_fields:
        key = env_name(name).lower()
        hit = next((env[k] for k in sorted(env) if k == key or k.startswith(key + "__")), None)
        fallback = next((v for v in FALLBACK_ENV.get(name, ()) if os.environ.get(v)), None)
        if name in overrides:
            out[name] = f"flag {flag_name(name)}"
        elif hit:
            out[name] = f"env {hit}"
        elif name in file_keys:
            out[name] = f"config {path}"
        elif fallback:
            out[name] = f"env {fallback}"
        else:
            out[name] = "default"
    return out
