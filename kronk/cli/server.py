"""``kronk server start|stop|status|logs``."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from kronk.cli import procs
from kronk.cli.client import Client, server_url
from kronk.cli.common import (
    SERVER_FIELDS,
    build_settings,
    config_option,
    ensure_dirs,
    err,
    fail,
    overrides_of,
    print_json,
    settings_options,
    url_option,
)
from kronk.processes import is_loopback_host
from kronk.settings import DEFAULT_MODEL, Settings, config_file_path


@click.group()
def server() -> None:
    """Start, stop and watch the kronk server."""


def _child_args(ctx: click.Context) -> list[str]:
    """The flags the user gave on the command line, minus --detach (for the background process)."""
    out: list[str] = []
    for p in ctx.command.params:
        if not isinstance(p, click.Option) or p.name in ("detach", "background_child") or p.name is None:
            continue
        if ctx.get_parameter_source(p.name) is not ParameterSource.COMMANDLINE:
            continue
        value = ctx.params[p.name]
        if p.is_flag:
            if value:
                out.append(p.opts[0])
        elif p.multiple:
            for v in value:
                out += [p.opts[0], str(v)]
        else:
            out += [p.opts[0], str(Path(value).absolute()) if isinstance(value, Path) else str(value)]
    return out


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _rotate(log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    if log.exists() and log.stat().st_size > 0:
        os.replace(log, log.with_name(log.name + ".1"))


def _kill_detached(home: Path, pid: int) -> None:
    procs.terminate([pid, *procs.session_members(pid)])
    procs.terminate(procs.session_members(pid))
    procs.clear_info(home, pid)


def _start_detached(ctx: click.Context, settings: Settings, url: str, start_timeout: float) -> None:
    log = procs.log_path(settings.home)
    _rotate(log)
    cmd = [sys.executable, "-m", "kronk.cli.main", "server", "start", *_child_args(ctx), "--background-child"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env, close_fds=True)
    err(f"kronk: starting the server in the background (pid {proc.pid}); logs: {log}")
    client = Client(url)
    deadline = time.monotonic() + start_timeout + 60
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                procs.clear_info(settings.home, proc.pid)
                fail(f"the server exited with code {proc.returncode} before it was ready; its log ({log}) ends:\n"
                     f"{_tail(log)}", 1)
            if client.health(timeout=1.0) is not None:
                err(f"kronk: server ready at {url} (pid {proc.pid}); stop it with `kronk server stop`")
                click.echo(url)
                return
            time.sleep(0.5)
    except KeyboardInterrupt:
        err("kronk: interrupted; stopping the background server")
        _kill_detached(settings.home, proc.pid)
        raise click.exceptions.Exit(130) from None
    _kill_detached(settings.home, proc.pid)
    fail(f"the server did not answer at {url}/health within {start_timeout + 60:.0f}s; it was stopped. "
         f"Its log ({log}) ends:\n{_tail(log)}", 1)


def _check_address(address: str) -> None:
    """A ``host:port`` Ray address must accept connections (ray.init would retry for minutes)."""
    if "://" in address or address in ("auto", "local"):
        return
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        fail(f"invalid --address {address!r}: give the Ray cluster's <host>:<port> (e.g. 10.0.0.5:6379)")
    if not procs.port_open(host.strip("[]") or "127.0.0.1", int(port), timeout=5.0):
        fail(f"nothing answers at the Ray address {address}; check --address (the head node's GCS port, "
             "usually 6379), or leave it out to start a local Ray cluster")


def _check_exposure(settings: Settings) -> None:
    """A host other machines reach needs API keys (or --insecure): exit 2 with how, before anything starts."""
    from kronk.security.keys import KeyFileError, keys_configured

    try:
        keyed = keys_configured(settings)
    except KeyFileError as e:
        fail(str(e))
    if keyed or is_loopback_host(settings.host):
        return
    if not settings.insecure:
        fail(f"refusing to serve on {settings.host} with no API keys: anyone who reaches this machine could use "
             "the server and pull or delete models. Create a key with `kronk key create` (clients send it as "
             "'Authorization: Bearer <key>'), or pass --insecure true (KRONK_INSECURE=1) to serve without keys; "
             "see docs/security.md")
    err(f"kronk: serving on {settings.host} with no API keys (--insecure); only requests whose Host is a loopback "
        "name or in allowed_hosts (--allowed-hosts) are answered")


def _model_arg(value: str) -> str | dict[str, str]:
    """``--model ./x.gguf``: served as given, loaded from the absolute path (replicas run elsewhere)."""
    path = Path(value).expanduser()
    if value.lower().endswith(".gguf") and not path.is_absolute():
        return {"name": value, "source": str(path.absolute())}
    return value


@server.command("start", short_help="Start Ray and the kronk Serve application.")
@click.option("--model", "-m", "model", multiple=True, metavar="NAME",
              help="A model to serve (repeatable): a catalog name, hf.co/<org>/<repo>:<QUANT> or a .gguf path "
              f"[env KRONK_MODELS=a,b; default: {DEFAULT_MODEL}].")
@click.option("--detach", "-d", is_flag=True, help="Run in the background (pid and logs under <home>).")
@click.option("--background-child", is_flag=True, hidden=True)
@config_option
@settings_options(SERVER_FIELDS)
@click.option("--start-timeout", type=click.FloatRange(min=1), default=600.0, show_default=True,
              help="Seconds to wait for the models to load before giving up.")
@click.pass_context
def start(ctx: click.Context, config: Path | None, model: tuple[str, ...], detach: bool, background_child: bool,
          start_timeout: float, **params: Any) -> None:
    """Start Ray (local, or join --address) and the kronk Serve application.

    Runs in the foreground with logs on the terminal until Ctrl-C; --detach runs it in the
    background. Flags beat KRONK_* environment variables, which beat the config file.
    """
    overrides = overrides_of(params)
    if model:
        overrides["models"] = [_model_arg(m) for m in model]
    settings = build_settings(overrides, config)
    ensure_dirs(settings)
    _check_exposure(settings)
    from kronk.cli.runner import run_server, validate_models

    validate_models(settings)
    if not isinstance(logging.getLevelName(settings.log_level.upper()), int):
        fail(f"unknown log level {settings.log_level!r}; use DEBUG, INFO, WARNING or ERROR (--log-level)")
    if settings.address:
        _check_address(settings.address)
    if settings.http_front == "replica":
        from deployments.launch import check

        if why := check(settings):
            fail(f"--http-front replica {why}; use --http-front proxy")
    running = procs.read_info(settings.home)
    if running and running["pid"] != os.getpid():
        fail(f"a kronk server is already running from {settings.home} (pid {running['pid']}, "
             f"{running.get('url')}); stop it with `kronk server stop` or use another --home")
    try:
        busy = procs.port_in_use(settings.host, settings.port)
    except OSError as e:
        fail(f"cannot listen on {settings.host}:{settings.port}: {e.strerror or e}; pick another --host")
    if busy:
        fail(f"port {settings.port} on {settings.host} is already in use (another server? see "
             "`kronk server status`); pick another with --port")
    url = f"http://{procs.client_host(settings.host)}:{settings.port}"
    if detach:
        _start_detached(ctx, settings, url, start_timeout)
        return
    config_path = config_file_path(config, settings.home)
    ctx.exit(run_server(settings, url, start_timeout, background_child, str(config_path) if config_path else None))


def _home_settings(home: Path | None, config: Path | None) -> Settings:
    return build_settings(overrides_of({"home": home}, ("home",)), config)


home_option = click.option("--home", type=click.Path(path_type=Path, file_okay=False), default=None,
                           help="kronk's home folder [env KRONK_HOME; default: ~/.kronk].")


@server.command("stop", short_help="Stop the server and all it started.")
@home_option
@config_option
@click.option("--timeout", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds to wait for a graceful stop before killing it.")
def stop(home: Path | None, config: Path | None, timeout: float) -> None:
    """Stop the server started from this home (and every process it started)."""
    settings = _home_settings(home, config)
    info = procs.read_info(settings.home)
    if info is None:
        procs.clear_info(settings.home)
        err(f"kronk: no kronk server is running from {settings.home}")
        return
    pid = int(info["pid"])
    try:
        leader = os.getsid(pid) == pid
    except OSError:
        leader = False
    err(f"kronk: stopping the server (pid {pid})")
    os.kill(pid, signal.SIGTERM)
    if procs.wait_gone([pid], timeout):
        err(f"kronk: the server did not stop within {timeout:.0f}s; killing it")
        procs.kill_all([pid, *procs.descendants(pid)])
        procs.wait_gone([pid], 10)
    if leader:  # a detached server leads its own session: nothing of it may outlive it
        procs.terminate(procs.session_members(pid), grace_s=3.0)
    host, port = procs.client_host(str(info.get("host") or "127.0.0.1")).strip("[]"), info.get("port")
    deadline = time.monotonic() + 10
    while port and procs.port_open(host, int(port)) and time.monotonic() < deadline:
        time.sleep(0.2)
    procs.clear_info(settings.home, pid)
    err("kronk: stopped")


@server.command("status", short_help="Is a server running? Its URL and models.")
@home_option
@config_option
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(home: Path | None, config: Path | None, url: str | None, as_json: bool) -> None:
    """Whether a server is running, its URL and its models (exit 1 if none answers)."""
    settings = _home_settings(home, config)
    info = procs.read_info(settings.home)
    client = Client.for_settings(url, settings)
    health = client.health()
    models: list[dict[str, Any]] = []
    if health is not None:
        try:
            models = client.get("/v1/models").get("data", [])
        except Exception:
            models = []
    data = {"running": health is not None, "url": client.url, "pid": info.get("pid") if info else None,
            "log": info.get("log") if info else None, "models": models}
    if as_json:
        print_json(data)
    elif health is None:
        click.echo(f"no kronk server is answering at {client.url}" + (
            f" (pid {info['pid']} is running but not ready yet)" if info else ""))
    else:
        click.echo(f"kronk server running at {client.url}" + (f" (pid {info['pid']})" if info else ""))
        for m in models:
            extra = f", context {m['context_length']}" if m.get("context_length") else ""
            state = m.get("status") or ("ready" if m.get("served") else "installed")
            click.echo(f"  {m['id']}: {'served' if m.get('served') else 'not served'}, {state}{extra}")
    if health is None:
        raise click.exceptions.Exit(1)


@server.command("logs")
@home_option
@config_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines (Ctrl-C to stop).")
@click.option("--lines", "-n", type=click.IntRange(min=0), default=100, show_default=True,
              help="How many of the last lines to print first (0: all).")
def logs(home: Path | None, config: Path | None, follow: bool, lines: int) -> None:
    """Print the log of the server started with --detach."""
    settings = _home_settings(home, config)
    path = procs.log_path(settings.home)
    if not path.exists():
        fail(f"no server log at {path}; logs are written there by `kronk server start --detach`", 1)
    with open(path, errors="replace") as f:
        text = f.read()
        shown = text.splitlines()[-lines:] if lines else text.splitlines()
        for line in shown:
            click.echo(line)
        if not follow:
            return
        try:
            while True:
                line = f.readline()
                if line:
                    click.echo(line, nl=False)
                else:
                    time.sleep(0.3)
        except KeyboardInterrupt:
            return


__all__ = ["server", "server_url"]
