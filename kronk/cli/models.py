"""``kronk model pull|list|show|rm|ps|check``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from kronk.cli.client import Client, ServerError
from kronk.cli.common import (
    STORE_FIELDS,
    build_settings,
    config_option,
    ensure_dirs,
    fail,
    human_bytes,
    overrides_of,
    print_json,
    settings_options,
    url_option,
)
from kronk.cli.ops import LocalOps, RemoteOps, open_ops
from kronk.settings import Settings


def store_options(f: Callable) -> Callable:
    f = settings_options(STORE_FIELDS)(f)
    f = config_option(f)
    f = url_option(f)
    return click.option("--local", is_flag=True,
                        help="Work on the models dir directly, even when a server is running.")(f)


def _ops(params: dict[str, Any], local: bool = False) -> LocalOps | RemoteOps:
    settings = _settings(params)
    return open_ops(params.get("url"), settings, local or bool(params.get("local")))


def _settings(params: dict[str, Any]) -> Settings:
    return build_settings(overrides_of(params, STORE_FIELDS), params.get("config"))


def table(columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(box=None, pad_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*[("" if v is None else str(v)) for v in r])
    Console(soft_wrap=False, width=max(Console().width, 120)).print(t)


def _with_paths(ops: LocalOps | RemoteOps, m: dict[str, Any]) -> dict[str, Any]:
    """A manifest dict with its folder and primary file, computed here from the models dir when this process
    works on the store itself (the server's answers name no path)."""
    if isinstance(ops, LocalOps) and m.get("name"):
        folder = ops.manager.store.model_dir(m["name"])
        m["dir"] = str(folder)
        if m.get("primary"):
            m["path"] = str(folder / m["primary"])
    return m


def _server_error(e: ServerError) -> None:
    fail(e.message, 2 if e.status in (400, 404, 422) else 1)


@click.group()
def model() -> None:
    """Pull, list, inspect and remove models."""


@model.command("pull", short_help="Download a model (progress on stderr).")
@click.argument("ref")
@store_options
def pull_cmd(ref: str, **params: Any) -> None:
    """Download a model (catalog name, hf.co/<org>/<repo>:<QUANT> or hf.co/<org>/<repo>/<file.gguf>).

    Talks to the running server's model manager if there is one, otherwise pulls in this
    process. Progress goes to stderr. Ctrl-C stops it; the same command resumes it.
    """
    from kronk.cli.pull import pull

    ops = _ops(params)
    if not ops.remote:
        ensure_dirs(ops.settings)
    pull(ops, ref)


@model.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of manifests) on stdout.")
@store_options
def list_cmd(as_json: bool, **params: Any) -> None:
    """The models on disk (served ones marked when a server is running)."""
    ops = _ops(params)
    try:
        models = ops.list_models()
        served = ops.served()
    except ServerError as e:
        _server_error(e)
    for m in models:
        m["served"] = m.get("name") in served
        _with_paths(ops, m)
    if as_json:
        print_json(models)
        return
    if not models:
        click.echo(f"no models in {ops.where}; pull one with `kronk model pull NAME` (see `kronk catalog list`)")
        return
    table(["NAME", "SIZE", "FAMILY", "SOURCE", "CREATED", "SERVED"],
          [[m["name"], human_bytes(m.get("size_bytes")), m.get("family") or "-",
            m.get("hf_repo") or m.get("pypi_package") or m.get("source"), str(m.get("created_at", ""))[:19],
            "yes" if m["served"] else ""] for m in models])


@model.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@store_options
def show_cmd(name: str, as_json: bool, **params: Any) -> None:
    """Details of one installed model."""
    ops = _ops(params)
    try:
        m = ops.get_model(name)
        served = ops.served()
    except ServerError as e:
        _server_error(e)
    if m is None:
        fail(f"model {name!r} is not installed in {ops.where}; see `kronk model list`, or pull it with "
             f"`kronk model pull {name}`")
    card = served.get(m["name"])
    m["served"] = card is not None
    _with_paths(ops, m)
    if card and card.get("context_length"):
        m["served_context_length"] = card["context_length"]
    if card and card.get("sampling_defaults"):  # what a request's unset sampling fields take, and from where
        m["sampling_defaults"] = card["sampling_defaults"]
    if as_json:
        print_json(m)
        return
    skip = {"chat_template", "files", "schema_version", "sampling_defaults"}
    for k, v in m.items():
        if k not in skip and v not in (None, [], ""):
            click.echo(f"{k:22} {human_bytes(v) if k == 'size_bytes' else v}")
    for f in m.get("files", []):
        click.echo(f"{'file':22} {f['name']} ({human_bytes(f['size'])}, sha256 {f['sha256'][:16]}...)")
    if m.get("chat_template"):
        tmpl = str(m["chat_template"])
        click.echo(f"{'chat_template':22} {tmpl if len(tmpl) < 60 else tmpl[:57] + '...'}")
    for field, d in (m.get("sampling_defaults") or {}).items():
        click.echo(f"{'sampling ' + field:22} {d['value']} ({d['source']})")


@model.command("rm")
@click.argument("name")
@store_options
def rm_cmd(name: str, **params: Any) -> None:
    """Delete an installed model from disk."""
    ops = _ops(params)
    try:
        removed = ops.remove(name)
    except ServerError as e:
        _server_error(e)
    if not removed:
        fail(f"model {name!r} is not installed in {ops.where}; see `kronk model list`")
    click.echo(f"removed {name}")


@model.command("ps", short_help="Loaded models: busy slots, KV use, tok/s.")
@url_option
@config_option
@click.option("--home", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="kronk's home folder (finds the server it started) [env KRONK_HOME].")
@click.option("--interval", type=click.FloatRange(min=0.1, max=60), default=1.0, show_default=True,
              help="Seconds between the two samples that give tok/s.")
@click.option("--watch", is_flag=True, help="Then follow model state changes (loading, loaded, unloaded, evicted).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def ps_cmd(url: str | None, config: Path | None, home: Path | None, interval: float, watch: bool,
           as_json: bool) -> None:
    """Loaded models: replica, busy slots, queue, KV cache use, tok/s; then every installed model's state in the
    pool (needs a running server)."""
    settings = build_settings(overrides_of({"home": home}, ("home",)), config)
    client = Client.for_settings(url, settings)
    client.require()
    try:
        pool = _pool_rows(client)
        first = client.get("/v1/stats").get("models", {})
        t0 = time.monotonic()
        time.sleep(interval)
        second = client.get("/v1/stats").get("models", {})
        dt = time.monotonic() - t0
    except ServerError as e:
        _server_error(e)
    out = []
    for name, info in second.items():
        st = info.get("stats") or {}
        before = (first.get(name) or {}).get("stats") or {}
        rate = (st.get("completion_tokens", 0) - before.get("completion_tokens", 0)) / dt if before else 0.0
        agg = info.get("aggregate") or {}  # every replica together (docs/observability.md)
        ttft = agg.get("ttft_s") or {}
        out.append({"model": name, "replica": info.get("replica"), "error": info.get("error"),
                    "replicas": info.get("replicas"), "ttft_p50_s": ttft.get("p50"), "ttft_p95_s": ttft.get("p95"),
                    "prefix_reuse": agg.get("prefix_cache_reuse_ratio"),
                    "decode_tok_s": {b: d.get("mean") for b, d in (agg.get("decode_tok_s") or {}).items()},
                    "total_requests": (agg.get("requests") or {}).get("total"),
                    "slots": st.get("n_slots"), "busy": st.get("active"), "waiting": st.get("waiting"),
                    "ctx_per_slot": st.get("n_ctx_slot"), "kv_cells_used": st.get("kv_cells_used"),
                    "kv_cells_total": st.get("kv_cells_total"), "requests": st.get("requests"),
                    "prompt_tokens": st.get("prompt_tokens"), "prompt_tokens_reused": st.get("prompt_tokens_reused"),
                    "completion_tokens": st.get("completion_tokens"), "tokens_per_s": round(max(rate, 0.0), 1)})
    if as_json:
        print_json({"models": out, "states": pool})
        return
    if pool:
        table(["MODEL", "STATE", "REPLICA", "ACTIVE", "KEEP-ALIVE", "UNLOADS IN", "SETTINGS"],
              [[r["model"] + (" (pinned)" if r["pinned"] else ""), r["state"] or "-", r["replica"] or "-",
                "-" if r["active"] is None else r["active"],
                "-" if r["state"] != "loaded" or r["pinned"] else ("never" if r["keep_alive_s"] is None
                                                                   else f"{r['keep_alive_s']:g}s"),
                "-" if r["expires_in_s"] is None else f"{r['expires_in_s']:g}s",
                ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or r["error"] or "-"] for r in pool])
    if not out:
        click.echo(f"no models loaded on {client.url}")

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x * 1000:.0f}"

    table(["MODEL", "REPLICA", "REPLICAS", "BUSY", "WAITING", "KV USED", "REQUESTS", "PROMPT (REUSED)", "GENERATED",
           "TOK/S", "TTFT P50/P95 MS", "REUSE"],
          [[r["model"], r["replica"] or r["error"] or "-", r["replicas"] if r["replicas"] is not None else "-",
            f"{r['busy']}/{r['slots']}", r["waiting"],
            f"{r['kv_cells_used']}/{r['kv_cells_total']}", r["requests"],
            f"{r['prompt_tokens']} ({r['prompt_tokens_reused']})", r["completion_tokens"], r["tokens_per_s"],
            f"{ms(r['ttft_p50_s'])}/{ms(r['ttft_p95_s'])}",
            "-" if r["prefix_reuse"] is None else f"{r['prefix_reuse']:.0%}"]
           for r in out])
    if watch:
        _watch(client)


def _pool_rows(client: Client) -> list[dict[str, Any]]:
    """Every installed model's state (loaded on which replica, loading, available, error) from /v1/models."""
    rows = []
    for card in client.get("/v1/models").get("data", []):
        where = card.get("loaded_on") or [{}]
        for at in where:
            rows.append({"model": card["id"], "state": card.get("state"), "pinned": card.get("pinned", False),
                         "replica": at.get("replica"), "active": at.get("active"),
                         "keep_alive_s": at.get("keep_alive_s"), "expires_in_s": at.get("expires_in_s"),
                         "settings": at.get("settings") or {}, "error": card.get("error")})
    return rows


def _watch(client: Client) -> None:
    """Print each model state change as it happens (GET /v1/models/events) until interrupted."""
    click.echo(f"watching model state changes on {client.url} (Ctrl-C to stop)")
    try:
        for ev in client.stream("/v1/models/events", None, timeout=None, method="GET"):
            extra = {k: ev[k] for k in ("reason", "for_model", "load_s") if ev.get(k) is not None}
            stamp = time.strftime("%H:%M:%S", time.localtime(ev.get("at", time.time())))
            click.echo(f"{stamp}  {ev['type']:9} {ev['model']}  on {ev.get('replica')}"
                       + (f"  {extra}" if extra else ""))
    except KeyboardInterrupt:
        pass
    except ServerError as e:
        _server_error(e)


@model.command("load", short_help="Load an installed model into the server's pool now.")
@click.argument("name")
@click.option("--keep-alive", default=None, metavar="DURATION",
              help="How long it stays loaded once idle: seconds or a duration (5m, 1h); -1 keeps it loaded.")
@url_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
def load_cmd(name: str, keep_alive: str | None, url: str | None, config: Path | None, as_json: bool) -> None:
    """Load NAME now (a model the server's pool serves on demand), so that its first request does not wait."""
    client = Client.for_settings(url, build_settings({}, config), timeout=900)
    client.require()
    try:
        st = client.post(f"/v1/models/{name}/load", {"keep_alive": keep_alive} if keep_alive is not None else {})
    except ServerError as e:
        _server_error(e)
    if as_json:
        print_json(st)
        return
    chosen = ", ".join(f"{k}={v}" for k, v in (st.get("settings") or {}).items())
    click.echo(f"{name}: {st.get('state')} on {st.get('replica')}" + (f" ({chosen})" if chosen else ""))


@model.command("unload", short_help="Unload a model from the server's pool.")
@click.argument("name")
@url_option
@config_option
def unload_cmd(name: str, url: str | None, config: Path | None) -> None:
    """Unload NAME (once its running requests end)."""
    client = Client.for_settings(url, build_settings({}, config), timeout=120)
    client.require()
    try:
        st = client.post(f"/v1/models/{name}/unload", {})
    except ServerError as e:
        _server_error(e)
    click.echo(f"{name}: {'unloaded' if st.get('state') == 'available' else st.get('state') + ' (unloads once idle)'}")


@model.command("check", short_help="Verify model files against their manifests.")
@click.option("--repair", is_flag=True, help="Remove models whose files are damaged (pull them again after).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")
@settings_options(STORE_FIELDS)
@config_option
def check_cmd(repair: bool, as_json: bool, **params: Any) -> None:
    """Re-hash every model's files against its manifest (exit 1 if any is damaged and not repaired)."""
    settings = _settings(params)
    results = LocalOps(settings).manager.check(repair)
    if as_json:
        print_json(results)
    elif not results:
        click.echo(f"no models in {settings.models_path}")
    for r in results if not as_json else []:
        if r["ok"]:
            click.echo(f"ok       {r['name']}")
        else:
            state = "removed" if r.get("removed") else "DAMAGED"
            click.echo(f"{state:8} {r['name']}: {'; '.join(r.get('problems') or [])}")
    bad = [r for r in results if not r["ok"] and not r.get("removed")]
    if bad:
        if not as_json:
            click.echo(f"{len(bad)} damaged model(s): run `kronk model check --repair`, then pull them again", err=True)
        raise click.exceptions.Exit(1)
